"""JupyterLab in a real browser: a Jupyter server with the book's kernel, headless Chromium
driven by selenium through the system chromedriver, a demo notebook run from the Run menu, and a
question typed into the demo panel that the model answers in the page.

The demo answers with a random tiny Llama and an untrained tiny WhisperVQ, built in seconds the
way the unit tests build them; espeak-ng really speaks the question.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_START_S = 90  # bound on the server answering /api/status
KERNEL_WORK_S = 180  # bound on any one wait for the kernel (imports, model building, a reply)
QUESTION = "what is the capital of Larlor?"

DEMO = """\
from ichigo_lib.checkpoints import write_llama_init, write_sound_init
from ichigo_lib.config import LlamaArch, TinyVQArch
from ichigo_lib.evaluate.demo import DemoPanel
from ichigo_lib.evaluate.speech_chat import ChatModel, EarlyFusion, quantizer_encoder
from ichigo_lib.speech import train_vq, whispervq
from ichigo_lib.speech.tts import Voice
from ichigo_lib.wordtok import build_word_tokenizer

arch = LlamaArch(
    num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=512
)
words = ["what", "is", "the", "capital", "of", "Larlor", "?", "Vazelro", "green"]
# seed 4: a random model whose greedy reply is words, not an immediate end of turn
base = write_llama_init(arch, build_word_tokenizer(words), "base", seed=4)
write_sound_init(base, "sound")
vq_arch = TinyVQArch(n_state=32, n_head=2, encoder_layers=1, codebook_dim=8)
vq = train_vq.build_tiny_whispervq(vq_arch, whispervq.CharCodec("ab"), seed=0).eval()
demo = DemoPanel(EarlyFusion(quantizer_encoder(vq), ChatModel("sound"), 8), Voice("en", "en-us"))
demo.widget
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


class Lab:
    """A running Jupyter server: its URL, token, root directory and log."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.log = root.parent / "jupyter.log"
        home = root.parent / "jupyter-home"
        env = os.environ | {
            "JUPYTER_CONFIG_DIR": str(home / "config"),  # lab settings and workspaces too
            "JUPYTER_DATA_DIR": str(home / "data"),  # no user kernels: the venv's python3
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "IPYTHONDIR": str(home / "ipython"),
        }
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            "--allow-root",  # CI runs as root
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
        ]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str):
        """GET ``/api/<path>`` as JSON."""
        request = urllib.request.Request(
            f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                self.api("status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{_tail(self.log)}")

    def kernel_connected_and_idle(self, _driver) -> bool:
        """The page's kernel is started, idle, and the page holds a websocket to it."""
        return any(k["connections"] and k["execution_state"] == "idle" for k in self.api("kernels"))

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab") / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Demo\nAsk the panel a question."),
        nbformat.v4.new_code_cell(DEMO),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ichigo)"}
    nbformat.write(nb, root / "demo.ipynb")
    server = Lab(root)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    chromium = shutil.which("chromium")
    if chromium is None or not CHROMEDRIVER.exists():
        pytest.fail(
            f"chromium ({chromium or 'not on PATH'}) and {CHROMEDRIVER} "
            f"({'present' if CHROMEDRIVER.exists() else 'missing'}) are both needed: "
            "`make system` installs them (Debian packages chromium, chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={lab.root.parent / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER), log_output=str(lab.root.parent / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(SERVER_START_S)
        yield driver
    finally:
        driver.quit()


def _wait(driver, lab, seconds, condition, what):
    """``condition`` within ``seconds``, or a failure with a screenshot, the notebook's outputs
    and the server's log."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.25).until(condition)
    except TimeoutException:
        shot = lab.root.parent / "failure.png"
        driver.save_screenshot(str(shot))
        outputs = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]
        pytest.fail(
            f"no {what} within {seconds} s (screenshot {shot}); notebook outputs:\n"
            + "\n".join(outputs)
            + f"\njupyter log:\n{_tail(lab.log)}"
        )


def test_demo_notebook_runs_in_jupyterlab_and_answers_a_typed_question(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    spec = lab.api("kernelspecs")["kernelspecs"]["python3"]["spec"]
    assert spec["argv"][0] == sys.executable, f"python3 is not the book's kernel: {spec}"
    browser.get(f"{lab.url}/lab/tree/demo.ipynb?token={lab.token}")
    # Run All before the page has its kernel session silently runs nothing: wait for the server
    # to see the page connected to an idle kernel, then for the page to show it idle.
    _wait(
        browser, lab, KERNEL_WORK_S, lab.kernel_connected_and_idle, "kernel connected to the page"
    )
    idle = (By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']")
    _wait(browser, lab, 30, EC.presence_of_element_located(idle), "idle kernel in the page")

    run_menu = (By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][normalize-space()='Run']")
    _wait(browser, lab, 30, EC.element_to_be_clickable(run_menu), "Run menu").click()
    run_all = (
        By.XPATH,
        "//li[contains(@class, 'lm-Menu-item')][normalize-space()='Run All Cells']",
    )
    _wait(browser, lab, 30, EC.element_to_be_clickable(run_all), "Run All Cells item").click()

    text_box = (By.CSS_SELECTOR, ".widget-text input[type='text']")
    box = _wait(browser, lab, KERNEL_WORK_S, EC.element_to_be_clickable(text_box), "demo panel")
    reply = (By.CSS_SELECTOR, ".widget-html-content b")
    assert not browser.find_elements(*reply), "the panel answered before it was asked"
    box.send_keys(QUESTION)
    ask = (By.XPATH, "//button[normalize-space()='speak and ask']")
    _wait(browser, lab, 30, EC.element_to_be_clickable(ask), "ask button").click()

    _wait(
        browser,
        lab,
        KERNEL_WORK_S,
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".jp-OutputArea"), "first token after"),
        "reply timing in the panel",
    )
    tokens = browser.find_element(By.CSS_SELECTOR, ".widget-html-content code").text
    assert "<|sound_" in tokens and "tokens," in tokens, tokens
    answers = [e.text.strip() for e in browser.find_elements(*reply)]
    panel = browser.find_element(By.CSS_SELECTOR, ".widget-vbox").text
    assert answers and answers[0], f"the demo's reply is empty; the panel shows:\n{panel}"
