"""``ichigo bench train``: model FLOPs, packed batches, timed steps and the CLI (on CPU)."""

import json

import pytest
import torch

from ichigo_lib import cli
from ichigo_lib.config import LlamaArch
from ichigo_lib.train import bench as B

ARCH = LlamaArch(
    num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=48, max_seq_len=64
)


def spec(**kw) -> B.TrainBench:
    base = dict(
        arch=ARCH,
        vocab_size=97,
        seq_len=64,
        batch_size=2,
        steps=2,
        warmup_steps=1,
        device="cpu",
        dtype="fp32",
        row_lengths=(8, 40),
    )
    return B.TrainBench(**(base | kw))


def test_flops_per_token_counts_every_matmul_and_attention():
    d, f, v, layers, seq = 32, 48, 97, 2, 64
    kv = 2 * (d // 4)  # two key/value heads of width d / 4 heads
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k, v, o, w1, w2, w3
    expected = 6 * (layers * per_layer + d * v) + 12 * layers * d * seq
    model = B.build_model(spec())
    assert B.flops_per_token(model, ARCH, seq) == expected


def test_published_shapes_have_the_sizes_of_their_models():
    counts = {}
    for name, arch in B.ARCHS.items():
        with torch.device("meta"):
            model = B.build_model(B.TrainBench(arch=arch, device="meta"))
        counts[name] = sum(p.numel() for p in model.parameters())
    # untied output projection and 515 extra tokens: Llama-3.2-1B untied is 1.50B,
    # Llama-3.1-8B is 8.03B
    assert 1.49e9 < counts["llama-1b"] < 1.51e9
    assert 8.03e9 < counts["llama-8b"] < 8.04e9


def test_packed_batch_fills_every_sequence_with_whole_rows():
    batch, nonpad = B.packed_batch(spec(batch_size=3, seq_len=128, row_lengths=(16, 48)))
    assert batch["tokens"].shape == batch["labels"].shape == (3, 128)
    assert batch["input_pos"].shape == (3, 128)
    assert 0.6 < nonpad <= 1.0
    # positions restart at every packed row: several rows per sequence
    assert (batch["input_pos"] == 0).sum() > 3


def test_bench_times_the_requested_steps_and_reports_mfu_only_with_a_peak():
    r = B.bench_train(spec())
    assert len(r.step_seconds) == 2 and all(s > 0 for s in r.step_seconds)
    assert r.tokens_per_step == 2 * 64
    assert r.tokens_per_second == pytest.approx(r.tokens_per_step / r.mean_step_s)
    assert r.mfu is None and r.peak_memory_gib is None
    r2 = B.bench_train(spec(peak_tflops=0.5, activation_checkpointing=False))
    assert r2.mfu == pytest.approx(r2.achieved_tflops / 0.5)
    text = B.format_result(r2)
    assert "tokens/s" in text and "MFU" in text and "of 0.5 TFLOP/s" in text


@pytest.mark.parametrize(
    "bad",
    [dict(steps=0), dict(warmup_steps=-1), dict(row_lengths=(40, 8)), dict(row_lengths=(8, 65))],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        spec(**bad)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "--profile", "smoke", "--seq-len", "64", "--batch-size", "2"]
    argv += ["--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "MFU" in printed
    result = json.loads(out.read_text())
    assert result["config"]["arch"]["num_layers"] == 1  # the smoke profile's base model
    assert result["tokens_per_second"] > 0 and len(result["step_seconds"]) == 1


def test_cli_names_the_problem_with_an_unknown_arch_or_a_profile_without_one():
    with pytest.raises(SystemExit, match="llama-1b"):
        cli.main(["bench", "train", "--arch", "llama-70b"])
    with pytest.raises(SystemExit, match="base_model.arch"):
        cli.main(["bench", "train", "--profile", "full"])
