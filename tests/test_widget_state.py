"""The rendered book shows widgets as the executed notebook left them: papermill (nbclient) saves
the widget state in the notebook, and Jupyter Book, with the book's own _config.yml, embeds that
state and the widget view in the page, with the ipywidgets HTML manager that renders them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[1]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CELLS = [
    "import ipywidgets as w\nanswer = w.HTML(placeholder='the reply')\ndisplay(w.VBox([answer]))",
    "answer.value = 'green, said after the display'",  # as DemoPanel.ask_text does in 07
]


def test_papermill_saves_the_final_widget_state_and_the_book_embeds_it(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ichigo)"}
    nbformat.write(nb, tmp_path / "source.ipynb")
    book = tmp_path / "book"
    executed = book / "widgets.ipynb"
    book.mkdir()
    # the options runner.run_notebook executes the book's notebooks with
    papermill.execute_notebook(
        str(tmp_path / "source.ipynb"),
        str(executed),
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        log_output=False,
    )
    state = nbformat.read(executed, as_version=4).metadata["widgets"][WIDGET_STATE]["state"]
    html_models = [m["state"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert [m["value"] for m in html_models] == ["green, said after the display"]

    shutil.copy(ROOT / "_config.yml", book)
    (book / "book").mkdir()
    shutil.copy(ROOT / "book" / "references.bib", book / "book")
    (book / "_toc.yml").write_text("format: jb-book\nroot: widgets\n")
    jupyter_book = str(Path(sys.executable).with_name("jupyter-book"))
    cmd = [jupyter_book, "build", str(book), "--warningiserror", "--keep-going"]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    page = (book / "_build" / "html" / "widgets.html").read_text()
    embedded = page.split(f'<script type="{WIDGET_STATE}">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["state"] == state
    view = '<script type="application/vnd.jupyter.widget-view+json">'
    assert page.count(view) == 1
    assert "@jupyter-widgets/html-manager@" in page and "/dist/embed-amd.js" in page
