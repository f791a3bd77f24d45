"""Training throughput: tokens/s and model FLOPs utilisation (MFU) of the training step.

``ichigo bench train`` builds a randomly initialised Llama (torchtune's ``llama3_1`` builder,
untied output projection, as Llama-3.1-s) and times the step the recipes run: packed rows
(torchtune's ``PackedDataset`` and ``padded_collate_packed``: a block-causal mask, flex
attention on CUDA), chunked cross-entropy, backward, AdamW, optionally with activation
checkpointing and ``torch.compile``. Batches are built before timing, so the figures are the
step alone, without data loading. Figures are measured, never asserted: they depend on the
machine.

MFU counts model FLOPs, not hardware FLOPs (recomputation under activation checkpointing does
not count): per token ``6 * N + 12 * L * d * T``, with ``N`` the parameters of every matrix
multiply (the output projection included, the input embedding not), ``L`` layers, ``d`` the
attention width and ``T`` the sequence length (PaLM's estimate, as nanoGPT's).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ichigo_lib.config import LlamaArch

# Llama-3.1-s: Llama-3.1's 128,256 tokens + 513 sound tokens + sound_start/sound_end.
SOUND_VOCAB = 128_771
# Published shapes (the models' config.json): Llama-3.2-1B and Llama-3.1-8B.
ARCHS = {
    "llama-1b": LlamaArch(
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=2048,
        intermediate_dim=8192,
        max_seq_len=131072,
    ),
    "llama-8b": LlamaArch(
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=4096,
        intermediate_dim=14336,
        max_seq_len=131072,
    ),
}
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a name in torch.cuda.get_device_name.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.05, "A6000": 154.8}


@dataclass(frozen=True)
class TrainBench:
    """One benchmark configuration: model shape, batch of packed rows, step options."""

    arch: LlamaArch
    vocab_size: int = SOUND_VOCAB
    seq_len: int = 4096
    batch_size: int = 1
    steps: int = 10
    warmup_steps: int = 3
    device: str = "cuda"
    dtype: str = "bf16"
    activation_checkpointing: bool = True
    compile: bool = False
    row_lengths: tuple[int, int] = (64, 1024)  # rows packed into each sequence, uniform
    loss_chunks: int = 8
    seed: int = 0
    peak_tflops: float | None = None  # None: from PEAK_BF16_TFLOPS on CUDA, unknown on CPU

    def __post_init__(self):
        if self.steps < 1 or self.warmup_steps < 0 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1 and warmup_steps >= 0")
        lo, hi = self.row_lengths
        if not 2 <= lo <= hi <= self.seq_len:
            raise ValueError(
                f"row_lengths {self.row_lengths} must satisfy 2 <= min <= max <= seq_len"
            )
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype must be bf16 or fp32, got {self.dtype!r}")


@dataclass
class TrainBenchResult:
    config: dict[str, Any]
    params: int
    flops_per_token: float
    step_seconds: list[float] = field(default_factory=list)
    tokens_per_step: int = 0
    nonpad_fraction: float = 0.0
    peak_memory_gib: float | None = None
    device_name: str = ""
    peak_tflops: float | None = None

    @property
    def mean_step_s(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.mean_step_s

    @property
    def achieved_tflops(self) -> float:
        return self.flops_per_token * self.tokens_per_second / 1e12

    @property
    def mfu(self) -> float | None:
        return self.achieved_tflops / self.peak_tflops if self.peak_tflops else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out |= {
            "mean_step_s": self.mean_step_s,
            "tokens_per_second": self.tokens_per_second,
            "achieved_tflops": self.achieved_tflops,
            "mfu": self.mfu,
        }
        return out


def build_model(spec: TrainBench) -> torch.nn.Module:
    """A randomly initialised torchtune Llama-3.1 of ``spec.arch`` (untied output)."""
    from torchtune.models.llama3_1 import llama3_1

    a = spec.arch
    return llama3_1(
        vocab_size=spec.vocab_size,
        num_layers=a.num_layers,
        num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads,
        embed_dim=a.embed_dim,
        intermediate_dim=a.intermediate_dim,
        max_seq_len=max(a.max_seq_len, spec.seq_len),
        rope_base=a.rope_base,
        norm_eps=a.norm_eps,
    )


def flops_per_token(model: torch.nn.Module, arch: LlamaArch, seq_len: int) -> float:
    """Model FLOPs of one trained token: ``6 * N + 12 * L * d * T`` (see the module docstring),
    ``N`` the weights of every ``nn.Linear`` (attention, MLP, output projection)."""
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * matmul + 12.0 * arch.num_layers * arch.embed_dim * seq_len


def packed_batch(spec: TrainBench) -> tuple[dict[str, Any], float]:
    """One batch of ``batch_size`` sequences packed from random rows, and its non-pad fraction."""
    from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, padded_collate_packed
    from torchtune.datasets import PackedDataset

    rng = random.Random(spec.seed)
    target = spec.batch_size * spec.seq_len
    rows, total = [], 0
    while total <= target:  # one row more than fills the packs: PackedDataset drops the rest
        n = rng.randint(*spec.row_lengths)
        toks = [rng.randrange(spec.vocab_size) for _ in range(n)]
        rows.append({"tokens": toks, "labels": toks})
        total += n
    packs = PackedDataset(rows, max_seq_len=spec.seq_len, max_packs=spec.batch_size)
    if len(packs) < spec.batch_size:
        raise ValueError(f"only {len(packs)} packs of {spec.seq_len} tokens from {len(rows)} rows")
    batch = padded_collate_packed([packs[i] for i in range(spec.batch_size)])
    nonpad = (batch["labels"] != CROSS_ENTROPY_IGNORE_IDX).float().mean().item()
    return batch, nonpad


def _peak_tflops(spec: TrainBench, device_name: str) -> float | None:
    if spec.peak_tflops is not None:
        return spec.peak_tflops
    if spec.device.startswith("cuda") and spec.dtype == "bf16":
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(spec: TrainBench) -> TrainBenchResult:
    """Time ``spec.steps`` training steps after ``spec.warmup_steps`` untimed ones."""
    from torchtune import training
    from torchtune.modules import TransformerSelfAttentionLayer
    from torchtune.modules.loss import CEWithChunkedOutputLoss

    device = torch.device(spec.device)
    torch.manual_seed(spec.seed)
    dtype = torch.bfloat16 if spec.dtype == "bf16" else torch.float32
    with torch.device(device):
        model = build_model(spec).to(dtype)
    if spec.activation_checkpointing:
        training.set_activation_checkpointing(
            model, auto_wrap_policy={TransformerSelfAttentionLayer}
        )
    loss_fn = CEWithChunkedOutputLoss(num_output_chunks=spec.loss_chunks)
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    if spec.compile:
        training.compile_model(model, verbose=False)
        loss_fn = training.compile_loss(loss_fn, verbose=False)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)

    batch, nonpad = packed_batch(spec)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    labels = batch.pop("labels")
    ignore = torch.full((labels.shape[0], 1), loss_fn.ignore_index, device=device)
    labels = torch.hstack((labels[..., 1:], ignore))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = TrainBenchResult(
        config=asdict(spec),
        params=sum(p.numel() for p in model.parameters()),
        flops_per_token=flops_per_token(model, spec.arch, spec.seq_len),
        tokens_per_step=spec.batch_size * spec.seq_len,
        nonpad_fraction=nonpad,
        device_name=name,
        peak_tflops=_peak_tflops(spec, name),
    )
    model.train()
    for step in range(spec.warmup_steps + spec.steps):
        _sync(device)
        start = time.perf_counter()
        loss = loss_fn(model(**batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= spec.warmup_steps:
            result.step_seconds.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {loss.item()} at step {step}")
    if device.type == "cuda":
        result.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _count(n: float) -> str:
    """1.03M, 1.24B: a parameter count at a glance."""
    if n < 1e3:
        return f"{n:.0f}"
    return next(
        f"{n / d:.2f}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "K")) if n >= d or d == 1e3
    )


def format_result(r: TrainBenchResult) -> str:
    """A plain-text table of one result."""
    c = r.config
    a = c["arch"]
    mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a (peak unknown; --peak-tflops)"
    mem = f"{r.peak_memory_gib:.1f} GiB" if r.peak_memory_gib is not None else "n/a"
    lines = [
        ("device", f"{r.device_name} ({c['dtype']})"),
        (
            "model",
            f"{_count(r.params)} params, {a['num_layers']} layers, dim {a['embed_dim']}, "
            f"vocab {c['vocab_size']:,}",
        ),
        (
            "step",
            f"batch {c['batch_size']} x {c['seq_len']} packed ({r.nonpad_fraction:.1%} non-pad), "
            f"activation checkpointing {c['activation_checkpointing']}, compile {c['compile']}",
        ),
        ("step time", f"{r.mean_step_s * 1e3:.1f} ms (mean of {len(r.step_seconds)})"),
        (
            "tokens/s",
            f"{r.tokens_per_second:,.0f} ({r.tokens_per_second * r.nonpad_fraction:,.0f} "
            "non-pad, as torchtune's recipes count them)",
        ),
        ("model TFLOP/s", f"{r.achieved_tflops:.2f} ({r.flops_per_token / 1e9:.2f} GFLOP/token)"),
        ("MFU", mfu + (f" of {r.peak_tflops:g} TFLOP/s" if r.peak_tflops else "")),
        ("peak memory", mem),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
