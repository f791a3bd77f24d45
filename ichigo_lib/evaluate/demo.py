"""The live demo: upload a wav or type text for espeak-ng to speak, see the sound tokens, read the
model's greedy reply as it streams, with the time to first token.

Building the panel only creates widgets and registers callbacks, so a notebook that displays it
runs straight through under papermill; :meth:`DemoPanel.ask_text` runs one request without a
click (the executed notebook shows one).
"""

from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass

import numpy as np

from ichigo_lib import tokens as T
from ichigo_lib.evaluate.speech_chat import EarlyFusion
from ichigo_lib.speech.audio import TOKENS_PER_SECOND, AudioError, prepare_audio
from ichigo_lib.speech.tts import TTSError, Voice, synthesize

SHOWN_TOKENS = 24


@dataclass(frozen=True)
class DemoResult:
    codes: np.ndarray
    reply: str
    ttft_s: float  # audio in hand -> first token (encoding included)
    total_s: float

    def __str__(self) -> str:
        return (
            f"{len(self.codes)} sound tokens -> reply {self.reply!r} | first token after "
            f"{1e3 * self.ttft_s:.1f} ms, whole reply {1e3 * self.total_s:.1f} ms"
        )


def wav_from_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """16 kHz mono float32 samples of an uploaded audio file (errors name the file)."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    except Exception as err:  # soundfile raises its own LibsndfileError
        raise AudioError(f"{name}: cannot decode audio ({err})") from err
    return prepare_audio(samples, rate, name=name)


class DemoPanel:
    """An ipywidgets panel around an :class:`EarlyFusion` system."""

    def __init__(self, system: EarlyFusion, voice: Voice) -> None:
        import ipywidgets as w

        self.system, self.voice = system, voice
        self.upload = w.FileUpload(accept=".wav,.flac,.ogg,.mp3", multiple=False)
        self.text = w.Text(
            placeholder="type a question for espeak-ng to speak", layout={"width": "60%"}
        )
        self.speak = w.Button(description="speak and ask", button_style="primary")
        self.tokens = w.HTML()
        self.reply = w.HTML()
        self.timing = w.HTML()
        self.upload.observe(self._on_upload, names="value")
        self.speak.on_click(lambda _: self._guarded(lambda: self.ask_text(self.text.value)))
        self.widget = w.VBox(
            [
                w.HBox([w.Label("wav:"), self.upload]),
                w.HBox([self.text, self.speak]),
                self.tokens,
                self.reply,
                self.timing,
            ]
        )

    def ask(self, wav: np.ndarray) -> DemoResult:
        """Encode ``wav``, stream the reply into the panel, and time it."""
        stop = self.system.llm.stop_ids
        t0 = time.perf_counter()
        messages = self.system.messages(wav)
        codes = T.string_to_codes(messages[0]["content"])
        shown = T.codes_to_string(codes[:SHOWN_TOKENS])
        more = (
            f" ... ({len(codes)} tokens, {len(codes) / TOKENS_PER_SECOND:.1f} s)"
            if len(codes)
            else ""
        )
        self.tokens.value = f"<code>{html.escape(shown)}{more}</code>"
        ids, ttft = [], None
        tok = self.system.llm.tokenizer
        for token_id in self.system.llm.stream_ids(messages, self.system.max_new_tokens):
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            if token_id in stop:
                break
            ids.append(token_id)
            self.reply.value = f"<b>{html.escape(tok.decode(ids, skip_special_tokens=True))}</b>"
        total = time.perf_counter() - t0
        result = DemoResult(codes, tok.decode(ids, skip_special_tokens=True).strip(), ttft, total)
        self.timing.value = (
            f"first token after {1e3 * result.ttft_s:.1f} ms; reply done after "
            f"{1e3 * result.total_s:.1f} ms"
        )
        return result

    def ask_text(self, text: str) -> DemoResult:
        """Speak ``text`` with espeak-ng in the panel's voice and :meth:`ask` it."""
        if not text.strip():
            raise TTSError("type some text first")
        return self.ask(synthesize(text, self.voice))

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            item = files[0]
            self._guarded(lambda: self.ask(wav_from_bytes(bytes(item["content"]), item["name"])))

    def _guarded(self, fn) -> None:
        try:
            fn()
        except (AudioError, TTSError) as err:
            self.reply.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
