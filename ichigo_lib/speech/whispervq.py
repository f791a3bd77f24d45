"""WhisperVQ: audio -> 25 Hz discrete sound tokens, from a real checkpoint or the tiny one.

File format (WhisperSpeech's ``RQBottleneckTransformer.save_model``): a ``torch.save`` dict with
``config`` (constructor arguments, incl. ``whisper_model_name``), ``tunables`` and ``state_dict``
(the bottleneck). The Whisper encoder/decoder are not in the file: WhisperSpeech loads them by
name with openai-whisper. The tiny quantizer trained in notebook 01 adds one key, ``ichigo``,
holding its own small Whisper (``dims`` + ``model_state_dict``, openai-whisper's checkpoint
layout: the encoder and, since format 2, a character-level text decoder), its character
alphabet, the decoder's languages, a CTC head and ``window: "clip"``. WhisperSpeech ignores the
extra key; we load either kind through :func:`load_whispervq`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ichigo_lib.errors import IchigoError
from ichigo_lib.speech import audio as A
from ichigo_lib.speech.ctc_prefix import CTCPrefixScorer
from ichigo_lib.speech.modules import AudioEncoder, Bottleneck, TextDecoder, key_mask

# openai-whisper's download table (the sha256 of each file is in its URL).
WHISPER_URLS = {
    "tiny": "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt",
    "tiny.en": "d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03/tiny.en.pt",
    "base": "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e/base.pt",
    "base.en": "25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead/base.en.pt",
    "small": "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794/small.pt",
    "medium": "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1/medium.pt",
    "medium.en": "d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f/medium.en.pt",
}
WHISPER_URL_ROOT = "https://openaipublic.azureedge.net/main/whisper/models/"
# Constructor arguments of RQBottleneckTransformer that shape the bottleneck.
_CONFIG_KEYS = ("vq_codes", "q_depth", "depth", "n_head", "head_width", "ffn_mult", "codebook_dim")


# Joint CTC/attention decoding of the tiny quantizer: weight of the CTC prefix score, and how
# many of the decoder's best characters it re-ranks at each step.
JOINT_CTC_WEIGHT = 0.5
JOINT_CANDIDATES = 5


class CheckpointFormatError(IchigoError, ValueError):
    """A quantizer or Whisper file that is not in the expected format."""


@dataclass(frozen=True)
class CharCodec:
    """Characters <-> ids for the tiny quantizer's CTC decoder; id 0 is the CTC blank."""

    alphabet: str

    BLANK = 0

    @property
    def n_vocab(self) -> int:
        return 1 + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self.alphabet))
        if unknown:
            raise ValueError(f"characters {unknown} of {text!r} are not in the decoder's alphabet")
        return [1 + self.alphabet.index(c) for c in text]

    def decode_ctc(self, ids: Sequence[int]) -> str:
        """Greedy CTC: merge repeats, drop blanks."""
        out, prev = [], self.BLANK
        for i in ids:
            if i != prev and i != self.BLANK:
                out.append(self.alphabet[i - 1])
            prev = i
        return "".join(out)

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> CharCodec:
        return cls("".join(sorted(set("".join(texts)))))


@dataclass(frozen=True)
class DecoderVocab:
    """Ids of the tiny quantizer's text decoder, Whisper-style: the characters of ``codec``
    (its id 0, CTC's blank, pads), then start-of-transcript, end-of-text and one token per
    language; a transcript is ``[sot, language, characters..., eot]``."""

    codec: CharCodec
    languages: tuple[str, ...]

    @property
    def sot(self) -> int:
        return self.codec.n_vocab

    @property
    def eot(self) -> int:
        return self.codec.n_vocab + 1

    @property
    def n_vocab(self) -> int:
        return self.codec.n_vocab + 2 + len(self.languages)

    def lang(self, lang: str) -> int:
        if lang not in self.languages:
            raise ValueError(f"language {lang!r} is not one of the decoder's {self.languages}")
        return self.eot + 1 + self.languages.index(lang)

    def sequence(self, text: str, lang: str) -> list[int]:
        return [self.sot, self.lang(lang), *self.codec.encode(text), self.eot]

    def decode(self, ids: Sequence[int]) -> str:
        """Characters up to the first end-of-text."""
        out = []
        for i in ids:
            if i == self.eot:
                break
            out.append(self.codec.alphabet[i - 1])
        return "".join(out)


def whisper_checkpoint(name_or_path: str, root: str | Path | None = None) -> dict:
    """openai-whisper checkpoint (``{"dims", "model_state_dict"}``) by file path or model name.

    Names resolve to ``<root>/<name>.pt`` (default root: openai-whisper's cache,
    ``~/.cache/whisper``), downloaded from OpenAI with its sha256 checked if missing.
    """
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path not in WHISPER_URLS:
            raise CheckpointFormatError(
                f"{name_or_path!r} is neither a Whisper checkpoint file nor one of "
                f"{sorted(WHISPER_URLS)}"
            )
        root = Path(root or Path.home() / ".cache" / "whisper")
        path = root / f"{name_or_path}.pt"
        if not path.is_file():
            _download(WHISPER_URL_ROOT + WHISPER_URLS[name_or_path], path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not {"dims", "model_state_dict"} <= set(ckpt):
        raise CheckpointFormatError(f"{path}: not an openai-whisper checkpoint (dims missing)")
    return ckpt


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` atomically, verifying the sha256 in the URL."""
    expected = url.split("/")[-2]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as err:
        raise CheckpointFormatError(
            f"cannot download {url} ({err}); put the file at {dest} or pass its path"
        ) from err
    if digest.hexdigest() != expected:
        tmp.unlink()
        raise CheckpointFormatError(f"{url}: sha256 mismatch, download corrupted")
    os.replace(tmp, dest)


def resolve_quantizer(ref: str | Path) -> Path:
    """Local path of a quantizer file: a path, or ``"repo_id:filename"`` on the HF hub."""
    path = Path(ref)
    if path.is_file():
        return path
    if ":" in str(ref) and not path.exists():
        repo_id, filename = str(ref).split(":", 1)
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=filename))
        except Exception as err:
            raise CheckpointFormatError(
                f"cannot fetch {filename} from the hub repo {repo_id} ({err}); download it "
                f"elsewhere and set speech.quantizer to the local file"
            ) from err
    raise CheckpointFormatError(f"{ref}: no such quantizer file (nor a 'repo_id:filename')")


class WhisperVQ(nn.Module):
    """Whisper encoder + quantized bottleneck: audio in, sound tokens out.

    Transcribing from the codes uses Whisper's decoder for real checkpoints and, for the tiny
    quantizer, its own character decoder (greedy), or the CTC head of format-1 files.
    """

    def __init__(
        self,
        encoder: AudioEncoder,
        bottleneck: Bottleneck,
        ctc_head: nn.Linear | None,
        window: str,
        spec: dict,
        codec: CharCodec | None = None,
        decoder: TextDecoder | None = None,
        languages: Sequence[str] = (),
    ):
        super().__init__()
        if window not in ("window", "clip"):
            raise ValueError(f"window must be 'window' or 'clip', got {window!r}")
        self.encoder, self.bottleneck, self.ctc_head = encoder, bottleneck, ctc_head
        self.decoder = decoder
        self.window = window
        self.spec = spec  # config/tunables/ichigo metadata, for save()
        self.codec = codec
        self.vocab = DecoderVocab(codec, tuple(languages)) if decoder is not None else None

    @property
    def vq_codes(self) -> int:
        return self.bottleneck.vq_codes

    @property
    def codebook(self) -> Tensor:
        """The code vectors, one row per code (the mask code excluded)."""
        return self.bottleneck.code_vectors(torch.arange(self.vq_codes)).detach().clone()

    @property
    def samples_per_token(self) -> int:
        return A.HOP_LENGTH * 2 * self.bottleneck.downsample

    @property
    def tokens_per_second(self) -> float:
        return A.SAMPLE_RATE / self.samples_per_token

    # -- encoding ---------------------------------------------------------------------------
    @torch.inference_mode()
    def latents_mels(self, mels: Sequence[Tensor]) -> list[Tensor]:
        """The l2-normalised vectors the quantizer compares with its codes (one per 40 ms,
        ``(time, codebook_dim)``) of log-mels (each (80, frames), at most 30 s), one batch."""
        if max(m.shape[-1] for m in mels) > 2 * self.encoder.n_ctx:
            raise ValueError(f"a log-mel exceeds {2 * self.encoder.n_ctx} frames; use encode()")
        if self.window == "window":
            batch, frames = A.pad_mels(mels, 2 * self.encoder.n_ctx, A.MEL_PAD_VALUE)
        else:
            batch, frames = A.pad_mels(mels)
        latents = self.bottleneck.pre_quant(
            self.encoder(batch, None if self.window == "window" else frames)
        )
        keep = frames // (2 * self.bottleneck.downsample)
        return [x[:k] for x, k in zip(latents, keep.tolist(), strict=True)]

    @torch.inference_mode()
    def encode_mels(self, mels: Sequence[Tensor]) -> list[Tensor]:
        """Codes of log-mels (each (80, frames), at most 30 s), one batch, one code per 40 ms:
        the most cosine-similar code of each of :meth:`latents_mels`."""
        nearest = self.bottleneck.vq._codebook.nearest
        return [nearest(x).cpu() for x in self.latents_mels(mels)]

    def encode(
        self, clips: Sequence[np.ndarray], batch_size: int = 16, names: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """Codes (int64) for each 16 kHz clip; clips over 30 s are encoded per 30 s window and
        concatenated (``len // 640`` tokens in all). Clips are validated (see ``prepare_audio``)
        and batched by length so little padding is computed."""
        names = names or [f"clip {i}" for i in range(len(clips))]
        pieces = []  # (clip index, window index, samples)
        for i, clip in enumerate(clips):
            clip = A.prepare_audio(clip, A.SAMPLE_RATE, name=names[i])
            pieces += [(i, j, w) for j, w in enumerate(A.windows(clip))]
        device = next(self.parameters()).device
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][2]))
        out: dict[tuple[int, int], Tensor] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            mels = [A.log_mel(pieces[k][2], device=str(device)) for k in idx]
            for k, codes in zip(idx, self.encode_mels(mels), strict=True):
                out[pieces[k][:2]] = codes
        result: list[list[Tensor]] = [[] for _ in clips]
        for i, j in sorted(out):
            result[i].append(out[(i, j)])
        return [torch.cat(parts).numpy().astype(np.int64) for parts in result]

    # -- decoding back to text --------------------------------------------------------------
    @torch.inference_mode()
    def transcribe(
        self,
        codes: Sequence[np.ndarray],
        langs: Sequence[str],
        batch_size: int = 64,
        ctc_weight: float = JOINT_CTC_WEIGHT,
    ) -> list[str]:
        """Transcripts decoded from the codes alone (through the dequantized bottleneck).

        The tiny quantizer's decoder decodes greedily, each next character chosen by
        ``ctc_weight`` x CTC prefix score + (1 - ``ctc_weight``) x decoder log-probability
        (joint CTC/attention decoding; 0 is the decoder alone)."""
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        if self.ctc_head is None or self.codec is None:
            return self._whisper_transcribe(codes, langs)
        if len(codes) != len(langs):
            raise ValueError(f"{len(codes)} code sequences but {len(langs)} languages")
        order = sorted(range(len(codes)), key=lambda i: len(codes[i]))
        out: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            texts = self._transcribe_batch(
                [codes[i] for i in idx], [langs[i] for i in idx], ctc_weight
            )
            out |= dict(zip(idx, texts, strict=True))
        return [out[i] for i in range(len(codes))]

    def _transcribe_batch(
        self, codes: Sequence[np.ndarray], langs: Sequence[str], ctc_weight: float
    ) -> list[str]:
        device = next(self.parameters()).device
        lengths = torch.tensor([len(c) for c in codes], device=device)
        batch = torch.zeros(len(codes), int(lengths.max()), dtype=torch.long, device=device)
        for i, c in enumerate(codes):
            batch[i, : len(c)] = torch.as_tensor(np.asarray(c), device=device)
        xa = self.bottleneck.dequantize(self.bottleneck.code_vectors(batch), lengths)
        frames = lengths * self.bottleneck.downsample
        if self.decoder is not None:
            ctc = None
            if ctc_weight > 0:
                logp = torch.log_softmax(self.ctc_head(xa).float(), -1)
                ctc = (CTCPrefixScorer(logp, frames, self.codec.BLANK), ctc_weight)
            return self._greedy(xa, key_mask(frames, xa.shape[1]), langs, lengths * 3 // 2, ctc)
        best = self.ctc_head(xa).argmax(-1)
        return [
            self.codec.decode_ctc(b[:k].tolist())
            for b, k in zip(best, frames.tolist(), strict=True)
        ]

    def _greedy(
        self,
        xa: Tensor,
        xa_mask,
        langs: Sequence[str],
        max_chars: Tensor,
        ctc: tuple[CTCPrefixScorer, float] | None,
    ) -> list[str]:
        """Greedy decoding from ``[sot, language]`` until every row has emitted end-of-text or
        ``max_chars`` characters (37 a second; espeak-ng at 190 words/min says at most 23). With
        ``ctc`` (scorer, weight), the decoder's top characters and end-of-text are re-ranked
        by the joint score."""
        v = self.vocab
        rows = torch.arange(len(langs), device=xa.device)
        tokens = torch.tensor([[v.sot, v.lang(g)] for g in langs], device=xa.device)
        allowed = torch.full((v.n_vocab,), float("-inf"), device=xa.device)
        allowed[1 : v.eot + 1] = 0.0  # characters and end-of-text
        allowed[v.sot] = float("-inf")
        limits = (max_chars + 2).clamp(max=self.decoder.n_ctx)
        done = limits <= tokens.shape[1]
        while not bool(done.all()):
            logp = torch.log_softmax(self.decoder(tokens, xa, xa_mask)[:, -1] + allowed, -1)
            nxt = logp.argmax(-1)
            if ctc is not None:
                scorer, w = ctc
                chars = logp[:, : v.sot].topk(min(JOINT_CANDIDATES, v.sot - 1)).indices
                psi, state = scorer.extend_scores(chars)
                joint = w * (psi - scorer.score[:, None]) + (1 - w) * logp.gather(1, chars)
                best_score, best = joint.max(1)
                end = w * (scorer.end_score() - scorer.score) + (1 - w) * logp[:, v.eot]
                stop = (end >= best_score) | done
                nxt = torch.where(stop, v.eot, chars[rows, best])
                scorer.advance(chars, psi, state, torch.where(stop, -1, best))
            nxt = torch.where(done, v.eot, nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            done |= (nxt == v.eot) | (limits <= tokens.shape[1])
        return [v.decode(t[2:].tolist()) for t in tokens]

    def _whisper_transcribe(self, codes: Sequence[np.ndarray], langs: Sequence[str]) -> list[str]:
        """Real checkpoints: decode with openai-whisper's decoder, as WhisperSpeech does."""
        try:
            import whisper
        except ImportError as err:
            raise ImportError(
                "transcribing from a real WhisperVQ checkpoint uses openai-whisper's decoder: "
                "pip install --no-deps openai-whisper (see requirements-whisper.txt)"
            ) from err
        model = self._whisper_model(whisper)
        texts = []
        for c, lang in zip(codes, langs, strict=True):
            c = torch.as_tensor(np.asarray(c), dtype=torch.long)
            stoks_len = self.encoder.n_ctx // self.bottleneck.downsample
            padded = torch.full((stoks_len,), self.vq_codes, dtype=torch.long)
            padded[: min(len(c), stoks_len)] = c[:stoks_len]
            with torch.inference_mode():
                xa = self.bottleneck.dequantize(self.bottleneck.code_vectors(padded[None]))
            options = whisper.DecodingOptions(language=lang, without_timestamps=True, fp16=False)
            texts.append(model.decode(xa, options)[0].text)
        return texts

    def _whisper_model(self, whisper):
        if getattr(self, "_whisper", None) is None:
            ckpt = self.spec["_whisper_ckpt"]
            model = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
            model.load_state_dict(ckpt["model_state_dict"])
            self._whisper = model.to(next(self.parameters()).device).eval()
        return self._whisper

    # -- saving -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the WhisperSpeech-format file (plus the ``ichigo`` key for our own Whisper)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = {k: v for k, v in self.spec.items() if not k.startswith("_")}
        spec["state_dict"] = self.bottleneck.state_dict()
        if self.window == "clip":
            whisper_sd = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
            if self.decoder is not None:
                whisper_sd |= {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
            spec["ichigo"] = {
                "format_version": 1 if self.decoder is None else 2,
                "window": "clip",
                "whisper": {"dims": self.spec["_dims"], "model_state_dict": whisper_sd},
                "ctc_head": self.ctc_head.state_dict(),
                "alphabet": self.codec.alphabet,
                "languages": list(self.vocab.languages if self.vocab else ()),
            }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(spec, tmp)
        os.replace(tmp, path)
        return path


def _bottleneck_from_spec(spec: dict, source: str) -> Bottleneck:
    config, tunables = spec.get("config"), spec.get("tunables") or {}
    if not isinstance(config, dict) or "state_dict" not in spec:
        raise CheckpointFormatError(f"{source}: not a WhisperVQ file (no config/state_dict)")
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointFormatError(f"{source}: config lacks {missing}")
    if config["q_depth"] != 1 or not config.get("use_cosine_sim", False):
        raise CheckpointFormatError(
            f"{source}: only single-quantizer cosine-similarity WhisperVQ is supported "
            f"(q_depth={config['q_depth']}, use_cosine_sim={config.get('use_cosine_sim')})"
        )
    if not tunables.get("mask_embs", False) or tunables.get("downsample_conv", False):
        raise CheckpointFormatError(f"{source}: needs mask_embs and mean downsampling")
    return Bottleneck(
        vq_codes=config["vq_codes"],
        depth=config["depth"],
        n_head=config["n_head"],
        head_width=config["head_width"],
        ffn_mult=config["ffn_mult"],
        codebook_dim=config["codebook_dim"],
        threshold_ema_dead_code=config.get("threshold_ema_dead_code", 0),
        downsample=config.get("downsample", 1),
        query_mult=tunables.get("query_mult", 1),
        rope=tunables.get("rope", False),
        codebook_decay=tunables.get("codebook_decay", 0.9),
    )


def _load_bottleneck_state(bottleneck: Bottleneck, state: dict, source: str) -> None:
    """Load, accepting both ``out_blocks.`` (older WhisperSpeech) and ``_out_blocks.`` keys."""
    state = {
        ("_" + k if k.startswith("out_blocks.") else k): v
        for k, v in state.items()
        if not k.endswith((".k_cache", ".v_cache"))
    }
    result = bottleneck.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("rotary.inv_freq")]
    if missing or result.unexpected_keys:
        raise CheckpointFormatError(
            f"{source}: state_dict does not match the bottleneck "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def _text_decoder(ckpt: dict) -> TextDecoder | None:
    """The character decoder of a format-2 tiny quantizer (None in format 1)."""
    sd = {k[8:]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("decoder.")}
    if not sd:
        return None
    d = ckpt["dims"]
    decoder = TextDecoder(
        d["n_vocab"], d["n_text_ctx"], d["n_text_state"], d["n_text_head"], d["n_text_layer"]
    )
    decoder.load_state_dict(sd)
    return decoder


def _whisper_encoder(ckpt: dict) -> AudioEncoder:
    d = ckpt["dims"]
    encoder = AudioEncoder(
        d["n_mels"], d["n_audio_ctx"], d["n_audio_state"], d["n_audio_head"], d["n_audio_layer"]
    )
    sd = ckpt["model_state_dict"]
    encoder.load_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("encoder.")})
    return encoder


def load_whispervq(
    ref: str | Path,
    whisper: str | Path | None = None,
    whisper_root: str | Path | None = None,
    device: str = "cpu",
) -> WhisperVQ:
    """Load a WhisperVQ quantizer: the real ``whisper-vq-stoks-*.model`` or the tiny one.

    ``ref`` is a local file or ``"repo_id:filename"`` on the HF hub. Real checkpoints take their
    Whisper encoder from ``whisper`` (a checkpoint path) or, by default, the model named in the
    file's config (``medium`` for ``v3-7lang``), cached under ``whisper_root``.
    """
    path = resolve_quantizer(ref)
    try:
        spec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointFormatError(f"{path}: cannot read the quantizer file ({err})") from err
    if not isinstance(spec, dict):
        raise CheckpointFormatError(f"{path}: not a WhisperVQ file (got {type(spec).__name__})")
    bottleneck = _bottleneck_from_spec(spec, str(path))
    _load_bottleneck_state(bottleneck, spec["state_dict"], str(path))
    meta = {k: v for k, v in spec.items() if k != "state_dict"}
    ichigo = spec.get("ichigo")
    if ichigo is not None:
        ckpt = ichigo["whisper"]
        codec = CharCodec(ichigo["alphabet"])
        head = nn.Linear(ckpt["dims"]["n_audio_state"], codec.n_vocab)
        head.load_state_dict(ichigo["ctc_head"])
        meta |= {"_dims": ckpt["dims"]}
        model = WhisperVQ(
            _whisper_encoder(ckpt),
            bottleneck,
            head,
            ichigo["window"],
            meta,
            codec,
            _text_decoder(ckpt),
            ichigo.get("languages", ()),
        )
    else:
        ckpt = whisper_checkpoint(
            str(whisper or spec["config"]["whisper_model_name"]), whisper_root
        )
        width = bottleneck.mlp_ln.normalized_shape[0]
        if ckpt["dims"]["n_audio_state"] != width:
            raise CheckpointFormatError(
                f"{path}: bottleneck width {width} does not match the Whisper encoder's "
                f"{ckpt['dims']['n_audio_state']} (wrong Whisper model for this quantizer?)"
            )
        meta |= {"_whisper_ckpt": ckpt}
        model = WhisperVQ(_whisper_encoder(ckpt), bottleneck, None, "window", meta)
    return model.to(device).eval()
