"""Training infrastructure on a tiny model: FSDP2 on CPU, resume after a kill, HF export.

Each test launches real ``tune run`` subprocesses (a 1-layer, 32-wide Llama, a few steps).
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ichigo_lib.checkpoints import (
    CheckpointError,
    torchtune_llama_from_hf,
    write_llama_init,
    write_sound_init,
)
from ichigo_lib.config import LlamaArch
from ichigo_lib.tokens import SOUND_TOKENS, SoundTokenError, audio_turn
from ichigo_lib.train.components import chat_dataset
from ichigo_lib.train.export import export_hf
from ichigo_lib.train.launch import LOSSES, compose_config, read_metric_log, tune_command, tune_run
from ichigo_lib.train.resume import (
    ResumeError,
    find_resume_point,
    resume_config,
    resume_tune_run,
    truncate_metric_log,
)
from ichigo_lib.wordtok import build_word_tokenizer

ARCH = LlamaArch(
    num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, intermediate_dim=64, max_seq_len=64
)
WORDS = "what did the cat dog do sat ran on under mat".split()
STOCK = "full_finetune_single_device"
GATE_ENV = "TRAIN_INFRA_BLOCK_AFTER"


def gated_chat_dataset(tokenizer, data_files, train_on_input=True, repeat=1, packed=False):
    """``chat_dataset`` whose sample fetches block (until the process is killed) after
    ``$TRAIN_INFRA_BLOCK_AFTER`` of them: a run that stops mid-epoch at a known step."""
    ds = chat_dataset(tokenizer, data_files, train_on_input, repeat, packed)
    return _Gated(ds, int(os.environ.get(GATE_ENV, "0")))


class _Gated(torch.utils.data.Dataset):
    def __init__(self, ds, block_after: int):
        self.ds, self.block_after, self.fetched = ds, block_after, 0

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, index):
        self.fetched += 1
        if self.block_after and self.fetched > self.block_after:
            time.sleep(3600)
        return self.ds[index]


def _epochs_checkpointed(output_dir: Path) -> int:
    try:
        return find_resume_point(output_dir).epochs_run
    except ResumeError:  # the run has not started, or is writing its recipe state
        return 0


def _text_run(root: Path, template: str = "base_text", **values):
    """A tiny text-training config: the word tokenizer, a random init, 8 chat rows."""
    tokenizer = build_word_tokenizer(WORDS)
    init = write_llama_init(ARCH, tokenizer, root / "init", seed=0)
    data = root / "chat.jsonl"
    with open(data, "w") as fh:
        for i in range(8):
            answer = " ".join(WORDS[2 + i % 4 : 6 + i % 4])
            conv = [
                {"role": "user", "content": "what did the cat do"},
                {"role": "assistant", "content": answer},
            ]
            fh.write(json.dumps({"conversations": conv}) + "\n")
    cfg = {
        "output_dir": str(root / "torchtune"),
        "model.vocab_size": len(tokenizer),
        "model.num_layers": ARCH.num_layers,
        "model.num_heads": ARCH.num_heads,
        "model.num_kv_heads": ARCH.num_kv_heads,
        "model.embed_dim": ARCH.embed_dim,
        "model.intermediate_dim": ARCH.intermediate_dim,
        "model.max_seq_len": ARCH.max_seq_len,
        "tokenizer.path": str(init / "tokenizer.json"),
        "tokenizer.max_seq_len": ARCH.max_seq_len,
        "dataset.data_files": str(data),
        "dataset.packed": False,
        "dataset.repeat": 4,
        "checkpointer.checkpoint_dir": str(init),
        "batch_size": 2,
        "max_steps_per_epoch": 3,
        "optimizer.lr": 1e-3,
        "lr_scheduler.num_warmup_steps": 1,
        **values,
    }
    return init, compose_config(template, cfg)


def test_tune_command_routes_distributed_runs_through_the_patched_recipe():
    single = tune_command(STOCK, "c.yaml")
    assert single[-3:] == [f"ichigo_lib/train/recipes/{STOCK}.py", "--config", "c.yaml"]
    assert "--nproc_per_node" not in single
    dist = tune_command("full_finetune_distributed", "c.yaml", nproc_per_node=1)
    assert dist[2:5] == [
        "--nproc_per_node",
        "1",
        "ichigo_lib/train/recipes/full_finetune_distributed.py",
    ]
    nodes = ["--nnodes", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node0:29500"]
    multi = tune_command("full_finetune_distributed", "c.yaml", 8, nodes)
    assert multi[2:10] == ["--nproc_per_node", "8", *nodes]
    assert multi[10].endswith("full_finetune_distributed.py")


def test_fsdp2_run_on_two_cpu_processes_trains_and_saves_an_hf_checkpoint(tmp_path):
    init, cfg = _text_run(tmp_path, "base_text")
    run = tune_run("full_finetune_distributed", cfg, tmp_path, num_steps=3, nproc_per_node=2)
    console = run.console_log.read_text()
    assert "Running with torchrun" in console
    assert console.count("Running FullFinetuneRecipeDistributed with resolved config") == 2
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 < r["loss"] < 10 for r in rows)
    trained = AutoModelForCausalLM.from_pretrained(run.checkpoint_dir(), dtype=torch.float32)
    start = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    delta = trained.lm_head.weight - start.lm_head.weight
    assert trained.config.vocab_size == cfg.model.vocab_size and delta.abs().max() > 0


def test_turn_weighted_loss_runs_inside_the_stock_recipe(tmp_path):
    """Every answer of the text run has the same length, so weighting each turn equally must
    give the token mean step for step: the loss is wired into the recipe as torchtune's is."""
    losses = {}
    for name, component in LOSSES.items():
        _, cfg = _text_run(
            tmp_path / name, **{"dataset.train_on_input": False, "loss._component_": component}
        )
        run = tune_run(STOCK, cfg, tmp_path / name, num_steps=3)
        losses[name] = [r["loss"] for r in run.metrics()]
    assert len(losses["turn"]) == 3
    assert losses["turn"] == pytest.approx(losses["token"], rel=1e-4)


def test_killed_run_resumes_after_its_last_epoch_checkpoint_with_the_same_losses(
    tmp_path, monkeypatch
):
    steps = {"epochs": 3, "max_steps_per_epoch": 2}
    _, straight_cfg = _text_run(tmp_path / "straight", **steps)
    straight = tune_run(STOCK, straight_cfg, tmp_path / "straight", num_threads=1)

    root = tmp_path / "killed"
    init, cfg = _text_run(
        root, **steps, **{"dataset._component_": f"{__name__}.gated_chat_dataset"}
    )
    config_path = root / "killed.yaml"
    OmegaConf.save(cfg, config_path)
    tests_dir = str(Path(__file__).parent)  # where the subprocesses import the gated dataset
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    block_after = steps["max_steps_per_epoch"] * cfg.batch_size  # the first batch of epoch 1
    out = Path(cfg.output_dir)
    with open(root / "killed.log", "w") as log:
        proc = subprocess.Popen(
            tune_command(STOCK, config_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, GATE_ENV: str(block_after), "OMP_NUM_THREADS": "1"},
        )
        try:
            deadline = time.monotonic() + 50
            while _epochs_checkpointed(out) < 1:
                assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "epoch 0 never checkpointed"
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait()
    assert [r["step"] for r in read_metric_log(out / "logs/train_log.txt")] == [1, 2]
    assert resume_config(out).checkpointer.checkpoint_files == [
        "epoch_0/model-00001-of-00001.safetensors"
    ]

    (out / "epoch_1").mkdir()  # as if killed while saving epoch 1, before its recipe state
    (out / "epoch_1" / "tokenizer.json").write_text("half written")

    run = resume_tune_run(STOCK, out, root, num_steps=6, num_threads=1)
    point = find_resume_point(out)
    assert point.complete and point.checkpoint_dir == out / "epoch_2"
    assert run.checkpoint_dir() == out / "epoch_2"
    tokenizer_file = (init / "tokenizer.json").read_text()
    assert (out / "epoch_1" / "tokenizer.json").read_text() == tokenizer_file
    rows, expected = run.metrics(), straight.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(rows, expected, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["lr"] == pytest.approx(want["lr"], abs=1e-12)
    with pytest.raises(ResumeError, match="final checkpoint: nothing to resume"):
        resume_config(out)


def test_resume_point_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    out = tmp_path / "torchtune"
    out.mkdir()
    OmegaConf.save({"epochs": 3, "max_steps_per_epoch": 2}, out / "torchtune_config.yaml")
    assert find_resume_point(out).epochs_run == 0
    with pytest.raises(ResumeError, match="no epoch finished"):
        resume_config(out)
    with pytest.raises(ResumeError, match="no torchtune run ever started"):
        resume_config(tmp_path)


def test_truncated_metric_log_keeps_whole_lines_up_to_the_step(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("Step 1 | loss:3.0 \nStep 2 | loss:2.9 \nStep 3 | loss:2.8 \nStep 4 | lo")
    truncate_metric_log(log, 2)
    assert [r["step"] for r in read_metric_log(log)] == [1, 2]


def _sound_init(root: Path, tied: bool = False) -> Path:
    """A random tiny Llama with the sound tokens; ``tied``: in Llama-3.2-1B's layout (output
    tied to the input embedding, llama3 RoPE scaling with factor 32)."""
    init = write_llama_init(ARCH, build_word_tokenizer(WORDS), root / "init", seed=0)
    if tied:
        config = LlamaConfig.from_pretrained(init)
        config.tie_word_embeddings = True
        config.rope_parameters = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(init)
    write_sound_init(init, root / "sound_init")
    return root / "sound_init"


@pytest.fixture
def sound_init(tmp_path):
    return _sound_init(tmp_path)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_of_a_trained_sound_checkpoint_matches_torchtune_logits(tmp_path, tied):
    sound_init = _sound_init(tmp_path, tied)
    rows = tmp_path / "sound.jsonl"
    gen = torch.Generator().manual_seed(0)
    with open(rows, "w") as fh:
        for _ in range(8):
            codes = torch.randint(0, 513, (10,), generator=gen).tolist()
            fh.write(json.dumps({"text": audio_turn(codes)}) + "\n")
    values = {
        "output_dir": str(tmp_path / "torchtune"),
        "tokenizer.max_seq_len": ARCH.max_seq_len,
        "dataset.data_files": str(rows),
        "dataset.packed": False,
        "checkpointer.checkpoint_dir": str(sound_init),
        "batch_size": 2,
        "max_steps_per_epoch": 2,
        "optimizer.lr": 1e-2,
        "lr_scheduler.num_warmup_steps": 0,
    }
    run = tune_run(STOCK, compose_config("phase_sound", values), tmp_path, num_steps=2)
    assert [r["step"] for r in run.metrics()] == [1, 2]

    out = export_hf(run.checkpoint_dir(), tmp_path / "export")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no leftovers
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    words = len(build_word_tokenizer(WORDS))
    assert model.config.vocab_size == len(tokenizer) == words + len(SOUND_TOKENS) + 2
    assert tokenizer.chat_template
    sound_7 = tokenizer.encode(SOUND_TOKENS[7], add_special_tokens=False)
    assert sound_7 == [tokenizer.convert_tokens_to_ids("<|sound_0000|>") + 7]
    reference = torchtune_llama_from_hf(run.checkpoint_dir()).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids), atol=1e-5, rtol=0)
        start = AutoModelForCausalLM.from_pretrained(sound_init, dtype=torch.float32)
        assert not torch.equal(start(ids).logits, model(ids).logits)  # the export is trained
    assert model.config.tie_word_embeddings == tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_failed_export_leaves_the_previous_export_untouched(tmp_path, sound_init):
    text_only = tmp_path / "init"  # the checkpoint before the sound tokens were added
    out = export_hf(sound_init, tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SoundTokenError, match="sound tokens"):
        export_hf(text_only, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "init", "sound_init"]
    assert export_hf(text_only, out, sound_tokens=False) == out
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(
        build_word_tokenizer(WORDS)
    )
    with pytest.raises(CheckpointError, match="no config.json"):
        export_hf(tmp_path / "missing", tmp_path / "x")
