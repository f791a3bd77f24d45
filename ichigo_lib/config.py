"""Profiles: YAML under ``ichigo_lib/configs/`` loaded into typed, frozen config objects.

A profile may start with ``extends: <other profile>`` and then override only what differs.
Unknown keys and wrong types are errors that name the key and the file they came from;
``overrides`` (a notebook's parameters cell, papermill ``-p``/``-y``) apply on top, either as
nested dicts or as dotted keys (``{"base_model.train.num_steps": 10}``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ichigo_lib.data.prompts import TRANSCRIPTION_PROMPTS
from ichigo_lib.errors import IchigoError
from ichigo_lib.world import WorldConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(IchigoError, ValueError):
    """A profile or override that does not fit the schema."""


class _SectionError(ConfigError):
    """A section's own validation failed; ``load_config`` names the layers that set its keys."""

    def __init__(self, section: str, problem: str) -> None:
        super().__init__(f"section '{section or 'top level'}': {problem}")
        self.section = section
        self.problem = problem


@dataclass(frozen=True)
class LlamaArch:
    """Shape of a Llama-3 style decoder (torchtune ``llama3`` component builder)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int
    rope_base: float = 500000.0
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of one torchtune run that a profile sets (everything else is in the YAML).

    A run is as long as either ``num_steps`` optimizer steps or ``epochs`` passes over its data
    (the steps then follow from the rows after packing, see ``ichigo_lib.train.schedule``).
    """

    batch_size: int
    lr: float
    warmup_steps: int
    max_seq_len: int
    num_steps: int | None = None
    epochs: int | None = None
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad_norm: float | None = None
    packed: bool = True
    train_on_input: bool = True
    # how the loss weighs trained tokens: "token", torchtune's mean over tokens (a turn counts
    # as its length); "turn", each trained turn equally (ichigo_lib.train.loss)
    loss_weighting: Literal["token", "turn"] = "token"
    dtype: Literal["fp32", "bf16"] = "bf16"
    device: str = "cuda"
    fused_optimizer: bool = True
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 42
    log_every_n_steps: int = 1
    nproc_per_node: int = 1
    # extra torchrun arguments for multi-node runs, e.g. ["--nnodes", "2", "--rdzv_backend",
    # "c10d", "--rdzv_endpoint", "node0:29500"] (tune run passes them on to torchrun)
    torchrun_args: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.num_steps is None) == (self.epochs is None):
            raise ConfigError(
                f"set one of num_steps and epochs (the other null), got num_steps="
                f"{self.num_steps}, epochs={self.epochs}"
            )
        if min(self.num_steps or 1, self.epochs or 1) < 1:
            raise ConfigError(f"num_steps and epochs must be >= 1: {self.num_steps}, {self.epochs}")


@dataclass(frozen=True)
class BaseModelConfig:
    """Where the base LLM comes from: trained here on the tiny world, or an HF checkpoint."""

    source: Literal["train", "hf"]
    hf_repo: str | None = None
    hf_revision: str | None = None
    arch: LlamaArch | None = None
    train: TrainConfig | None = None


@dataclass(frozen=True)
class MCConfig:
    """Multiple-choice knowledge evaluation (lm-evaluation-harness)."""

    benchmark: Literal["tinyworld", "mmlu"]
    headline: Literal["cloze", "letter"] = "cloze"
    num_fewshot: int = 5
    apply_chat_template: bool = False
    batch_size: int = 8
    limit: int | None = None
    device: str = "cuda"
    dtype: str = "auto"
    # mmlu's dataset: a hub id or a local copy of the hub repository (per-subject parquet and
    # its README's configs); None: lm-eval's own, cais/mmlu
    dataset: str | None = None

    def __post_init__(self):
        if self.dataset is not None and self.benchmark == "tinyworld":
            raise ConfigError("eval.mc.dataset is for mmlu; tinyworld's items come from the world")


@dataclass(frozen=True)
class JudgeConfig:
    """Who rates answers to spoken instructions 0-5 (AudioBench rubric).

    ``reference``: the deterministic reference-match judge (toy profiles). ``endpoint``: an LLM
    behind any OpenAI-compatible server; ``url``/``model`` may be left empty and come from
    $ICHIGO_JUDGE_URL / $ICHIGO_JUDGE_MODEL or ``ichigo eval --judge-url``. The API key is read
    only from the environment variable named by ``api_key_env``, never from a profile.
    """

    kind: Literal["reference", "endpoint"] = "reference"
    url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0  # wait before retry i: backoff_s * 2**i
    cache: bool = True  # replies cached under the run, so a re-run costs nothing

    def __post_init__(self):
        if not self.api_key_env.replace("_", "").isalnum() or self.api_key_env[0].isdigit():
            raise ConfigError(
                f"eval.judge.api_key_env must name an environment variable (e.g. "
                f"OPENAI_API_KEY), got {self.api_key_env[:4]!r}...; never put the key itself "
                f"in a profile"
            )
        if self.concurrency < 1 or self.timeout_s <= 0 or min(self.max_retries, self.backoff_s) < 0:
            raise ConfigError(
                f"eval.judge needs concurrency >= 1, timeout_s > 0 and max_retries >= 0, got "
                f"{self.concurrency}, {self.timeout_s}, {self.max_retries}"
            )
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"eval.judge.url must start with http:// or https://: {self.url!r}")


@dataclass(frozen=True)
class LatencyConfig:
    """Time to first token, early fusion vs cascade, on the same spoken clips."""

    clips: int = 20
    warmup: int = 1  # dropped calls before timing (the paper drops the first run)
    repeats: int = 1

    def __post_init__(self):
        if self.clips < 2 or self.warmup < 0 or self.repeats < 1:
            raise ConfigError(
                f"eval.latency needs clips >= 2, warmup >= 0, repeats >= 1, got {self.clips}, "
                f"{self.warmup}, {self.repeats}"
            )


@dataclass(frozen=True)
class BenchmarksConfig:
    """The paper's speech benchmarks, each a hub id or a local copy in the same schema (parquet
    or json files, or a ``save_to_disk`` directory); a set left None is not run.

    ``openhermes`` and ``alpaca`` (AudioBench's OpenHermes-Audio and ALPACA-Audio: ``context``
    audio, ``speech_instruction``, ``answer``) are judged under ``rubric``; ``librispeech``
    (``context``, ``answer``) is transcribed, asked with transcription prompt ``asr_prompt``.
    ``limit``: the first rows of each set (None: all).
    """

    openhermes: str | None = None
    alpaca: str | None = None
    librispeech: str | None = None
    split: str = "test"
    limit: int | None = None
    asr_prompt: int = 0
    rubric: Literal["audiobench", "book"] = "audiobench"
    max_new_tokens: int = 500  # AudioBench's reply length for spoken instructions

    def __post_init__(self):
        if not (self.openhermes or self.alpaca or self.librispeech):
            raise ConfigError(
                "eval.benchmarks names no set: give openhermes, alpaca or librispeech (a hub id "
                "or a local path), or set eval.benchmarks to null"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.benchmarks.limit must be >= 1 or null, got {self.limit}")
        if not 0 <= self.asr_prompt < len(TRANSCRIPTION_PROMPTS):
            raise ConfigError(
                f"eval.benchmarks.asr_prompt must index the {len(TRANSCRIPTION_PROMPTS)} "
                f"transcription prompts (0-{len(TRANSCRIPTION_PROMPTS) - 1}), got {self.asr_prompt}"
            )
        if self.max_new_tokens < 1:
            raise ConfigError(f"eval.benchmarks.max_new_tokens must be >= 1: {self.max_new_tokens}")


@dataclass(frozen=True)
class EvalConfig:
    mc: MCConfig
    judge: JudgeConfig = JudgeConfig()
    latency: LatencyConfig = LatencyConfig()
    benchmarks: BenchmarksConfig | None = None  # the paper's speech benchmarks (full); None: off
    max_new_tokens: int = 32  # greedy reply length for judged, transcribed and refusal replies
    batch_size: int = 64  # prompts per generate() batch
    items: int | None = None  # held-out items per set (None: all of them)
    device: str = "cpu"  # where replies are generated and latency is timed


@dataclass(frozen=True)
class SpeechCorpusConfig:
    """What the quantizer hears: the world's sentences spoken by espeak-ng in varied voices."""

    voices_per_sentence: int = 2
    extra_english_questions: int = 600  # trained QA questions added (spoken in phases 2-3)
    heldout_per_language: int = 25  # held-out sentences per language for the metrics
    speeds: tuple[int, int] = (130, 190)  # words per minute
    seed: int = 0


@dataclass(frozen=True)
class TinyVQArch:
    """The tiny WhisperVQ: Whisper-style encoder, bottleneck, character decoder + CTC head."""

    n_state: int = 128
    n_head: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 2  # 0: transcribe with the CTC head alone
    text_ctx: int = 256  # decoder positions: the longest transcript + 3
    bottleneck_depth: int = 1
    codebook_dim: int = 32
    vq_codes: int = 512
    codebook_decay: float = 0.8
    dead_code_threshold: float = 2.0


@dataclass(frozen=True)
class VQTrainConfig:
    """Training of the tiny quantizer (CTC transcription through the bottleneck + commitment)."""

    num_steps: int
    batch_seconds: float = 60.0
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    quantizer_start_step: int = 150  # train unquantized first, then k-means init the codebook
    aux_ctc_weight: float = 0.3  # CTC on the encoder output, a training aid
    commitment_weight: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class SpeechConfig:
    """The speech tokenizer: trained here (tiny) or a published WhisperVQ checkpoint."""

    source: Literal["train", "pretrained"]
    corpus: SpeechCorpusConfig = SpeechCorpusConfig()
    quantizer: str | None = None  # file or "repo_id:filename" (pretrained)
    whisper: str | None = None  # Whisper checkpoint path/name (default: the file's config)
    whisper_root: str | None = None
    arch: TinyVQArch | None = None
    train: VQTrainConfig | None = None
    encode_batch_size: int = 16
    device: str = "cpu"
    # the LLM's sound-token input embeddings: "mean" of the old rows (upstream) or "codebook",
    # the quantizer's code vectors projected into the LLM (checkpoints.codebook_embeddings)
    sound_init: Literal["mean", "codebook"] = "mean"

    def __post_init__(self):
        if self.source == "train" and (self.arch is None or self.train is None):
            raise ConfigError("speech.source 'train' needs speech.arch and speech.train")
        if self.source == "pretrained" and not self.quantizer:
            raise ConfigError("speech.source 'pretrained' needs speech.quantizer")


@dataclass(frozen=True)
class DataConfig:
    """The synthetic-data pipeline (notebook 02) and the datasets of the three phases."""

    backend: Literal["espeak", "whisperspeech"] = "espeak"
    # t2s: WhisperSpeech's T2S emits tokens directly; stand_in: the listening control, each
    # word a fixed pseudo-random run of codes in every row (ichigo_lib.data.stand_in)
    path: Literal["audio", "t2s", "stand_in"] = "audio"
    t2s_model: str | None = None  # WhisperSpeech refs ("repo:file"); None: its defaults
    s2a_model: str | None = None
    agreement_rows: int = 0  # texts spoken through both paths to score T2S against audio
    num_workers: int = 2
    device: str = "cpu"
    rows_per_shard: int = 250
    flush_every: int = 50
    retries: int = 3
    phase1_voices: int = 2  # voices per training sentence (sound-only pretraining)
    phase2_rows: int = 6000
    mix: tuple[float, float, float] = (0.7, 0.2, 0.1)  # speech instruction, transcription, text
    phase3_dialogues: int | None = None  # None: every dialogue of the world
    eval_questions: int = 200  # held-out spoken questions
    eval_sentences_per_language: int = 25  # held-out sentences to transcribe
    max_seq_len: int = 512  # rows longer than this (LLM tokens) are counted as over-long
    speeds: tuple[int, int] = (130, 190)
    seed: int = 0
    # published datasets used instead of the world's (hub id "owner/name[:config]" or a local
    # file/dir in upstream's schema: {text} or {tokens} rows for phase 1, {conversations} for
    # phases 2-3, see data.hub); None: synthesize the world's rows
    published_phase1: str | None = None
    # phase 1's data directories (upstream: one per language) -> fraction of its rows used;
    # None: the whole split
    published_phase1_languages: dict[str, float] | None = None
    published_phase2: str | None = None
    published_phase3: str | None = None
    # phase -> rows kept of its published dataset (a seeded sample, drawn after every row is
    # checked, and after phase 1's language fractions); absent: all of them
    published_rows: dict[str, int] | None = None

    def __post_init__(self):
        if self.path == "t2s" and self.backend != "whisperspeech":
            raise ConfigError("data.path 't2s' needs data.backend 'whisperspeech'")
        if len(self.mix) != 3 or abs(sum(self.mix) - 1) > 1e-6 or min(self.mix) < 0:
            raise ConfigError(f"data.mix must be 3 non-negative fractions summing to 1: {self.mix}")
        bad = {k: v for k, v in (self.published_phase1_languages or {}).items() if not 0 < v <= 1}
        if bad:
            raise ConfigError(
                f"data.published_phase1_languages: fractions must be in (0, 1]: {bad}"
            )
        budget = self.published_rows or {}
        unknown = set(budget) - {"phase1", "phase2", "phase3"}
        if unknown:
            raise ConfigError(f"data.published_rows: unknown phases {sorted(unknown)}")
        bad = {k: v for k, v in budget.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ConfigError(f"data.published_rows: row counts must be integers >= 1: {bad}")


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: its torchtune run, recipe and checkpoint period."""

    train: TrainConfig
    # full_finetune_single_device, or full_finetune_distributed (FSDP2, train.nproc_per_node)
    recipe: str = "full_finetune_single_device"
    # optimizer steps per checkpoint (with train.epochs: at most this many); None: only at the end
    checkpoint_every: int | None = None

    def __post_init__(self):
        every, steps = self.checkpoint_every, self.train.num_steps
        if every is not None and (every < 1 or (steps is not None and steps % every)):
            raise ConfigError(f"checkpoint_every ({every}) must divide train.num_steps ({steps})")


@dataclass(frozen=True)
class Phase3DataConfig:
    """Phase 3's inaudible input (notebook 05): random sound-token sequences, length-matched to
    the spoken prompts, answered with refusals and mixed into the spoken multi-turn chats."""

    inaudible_fraction: float = 0.15  # single-turn inaudible rows, as a fraction of all rows
    mid_conversation_fraction: float = 0.1  # chats given an inaudible exchange between turns
    # phase-2 rows replayed beside them (0 upstream; the tiny world's 600 chats alone are too
    # narrow to keep its knowledge)
    phase2_replay_rows: int = 0
    eval_inaudible: int = 200  # held-out inaudible inputs (never trained on)
    # "pool": the compositional phrasings of data.prompts; "endpoint": an OpenAI-compatible
    # chat server writes them (upstream: Qwen2.5-72B), cached under the run
    refusal_source: Literal["pool", "endpoint"] = "pool"
    refusal_pool_size: int = 150  # distinct refusal phrasings to draw from
    refusal_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 (or $ICHIGO_REFUSAL_URL)
    refusal_model: str | None = None  # served model name (or $ICHIGO_REFUSAL_MODEL)
    refusal_api_key_env: str = "OPENAI_API_KEY"  # the key itself only ever comes from the env
    seed: int = 0

    def __post_init__(self):
        for name in ("inaudible_fraction", "mid_conversation_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"phase3_data.{name} must be in [0, 1), got {value}")
        if self.phase2_replay_rows < 0:
            raise ConfigError(
                f"phase3_data.phase2_replay_rows must be >= 0: {self.phase2_replay_rows}"
            )
        for name in ("eval_inaudible", "refusal_pool_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"phase3_data.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Config:
    """A whole resolved profile."""

    profile: str
    description: str
    world: WorldConfig
    base_model: BaseModelConfig
    speech: SpeechConfig
    data: DataConfig
    phase1: PhaseConfig
    phase2: PhaseConfig
    phase3: PhaseConfig
    eval: EvalConfig
    phase3_data: Phase3DataConfig = Phase3DataConfig()
    num_threads: int | None = None
    extends: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config, as printed at the start of every run."""
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)


def profile_path(profile: str | Path) -> Path:
    """The YAML file of a profile given by name (``tiny``) or path."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile '{profile}': choose one of {names}")
    return path


def load_config(profile: str | Path = "tiny", overrides: dict | str | None = None) -> Config:
    """Load a profile (following ``extends``), apply ``overrides`` and validate everything."""
    path = profile_path(profile)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}  # dotted key -> the layer that set it last
    for layer_path in _extends_chain(path):
        layer = _read_yaml(layer_path)
        _check_keys(Config, layer, str(layer_path), prefix="")
        merged = _deep_merge(merged, layer)
        origins |= dict.fromkeys(_leaves(layer), str(layer_path))
    if overrides:
        source = "overrides (--set or notebook parameters)"
        layer = _nest_dotted(_parse_overrides(overrides, source), source)
        _check_keys(Config, layer, source, prefix="")
        merged = _deep_merge(merged, layer)
        origins |= {key: f"override {key}={value!r}" for key, value in _leaves(layer).items()}
    merged["profile"] = path.stem
    merged.setdefault("description", "")
    try:
        return _build(Config, merged, str(path), prefix="")
    except _SectionError as err:
        raise ConfigError(f"{_culprits(origins, err.section)}: {err}") from err


def _leaves(layer: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested mapping under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _culprits(origins: dict[str, str], section: str) -> str:
    """Who set the keys of a section that failed its validation: the overrides among them
    first (the likely cause), then the files."""
    inside = [src for key, src in origins.items() if not section or key.startswith(section + ".")]
    named = list(dict.fromkeys(sorted(inside, key=lambda src: not src.startswith("override"))))
    return ", ".join(named) if named else "defaults"


def _extends_chain(path: Path) -> list[Path]:
    chain = [path]
    while True:
        parent = _read_yaml(chain[0]).get("extends")
        if parent is None:
            return chain
        parent_path = profile_path(parent)
        if parent_path in chain:
            raise ConfigError(f"{path}: 'extends' forms a cycle through {parent_path}")
        chain.insert(0, parent_path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _parse_overrides(overrides: dict | str, source: str) -> dict[str, Any]:
    if isinstance(overrides, str):
        overrides = yaml.safe_load(overrides) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(overrides).__name__}")
    return overrides


def _nest_dotted(flat: dict[str, Any], source: str) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict):
            value = _nest_dotted(value, source)
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: key '{key}' conflicts with another override")
        node[leaf] = _deep_merge(node.get(leaf, {}), value) if isinstance(value, dict) else value
    return nested


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _unknown_key_error(cls: type, key: str, source: str, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    hint = difflib.get_close_matches(key, names, n=1)
    did_you_mean = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
    return ConfigError(
        f"{source}: unknown key '{prefix}{key}'{did_you_mean}; valid keys here: {names}"
    )


def _check_keys(cls: type, data: dict[str, Any], source: str, prefix: str) -> None:
    """Check one layer (a file or the overrides) before merging, so errors name its source:
    keys the schema lacks and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key_error(cls, key, source, prefix)
        sub = _dataclass_of(hints[key])
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, source, f"{prefix}{key}.")
        elif key != "extends":
            _coerce(hints[key], value, source, prefix + key)


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], source, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{key}'")
    for name in data:
        if name not in hints:
            raise _unknown_key_error(cls, name, source, prefix)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a section's own validation (e.g. WorldConfig ranges)
        raise _SectionError(prefix.rstrip("."), str(err)) from err


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail() -> ConfigError:
        return ConfigError(
            f"{source}: key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        sub = _dataclass_of(tp)
        if sub is not None and isinstance(value, dict):
            return _build(sub, value, source, key + ".")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except ConfigError:
                continue
        raise fail()
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis and isinstance(value, list | tuple):
            args = (args[0],) * len(value)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise fail()
        return tuple(
            _coerce(a, v, source, f"{key}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return {
            _coerce(args[0], k, source, f"{key}.{k}"): _coerce(args[1], v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise ConfigError(f"{source}: key '{key}' has an unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
