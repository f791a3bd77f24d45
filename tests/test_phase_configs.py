"""The `full` phase configs carry the write-up's values exactly, each phase one epoch of its
data as upstream (the write-up's step counts follow from upstream's row counts unpacked);
smaller profiles change only sizes, steps and devices."""

import dataclasses

import numpy as np
import pytest

from ichigo_lib.config import ConfigError, PhaseConfig, TrainConfig, load_config
from ichigo_lib.train import schedule

# recipe-facts.md, "Training (torchtune full fine-tune, FSDP2)"
PAPER = {
    "phase1": {
        "global_batch": 480,
        "lr": 2e-4,
        "warmup_steps": 50,
        "weight_decay": 0.005,
        "max_seq_len": 512,
        "num_steps": 8064,
    },
    "phase2": {
        "global_batch": 256,
        "lr": 7e-5,
        "warmup_steps": 73,
        "weight_decay": 0.005,
        "max_seq_len": 4096,
        "num_steps": 7400,
    },
    "phase3": {
        "global_batch": 256,
        "lr": 1.5e-5,
        "warmup_steps": 8,
        "weight_decay": 0.005,
        "max_seq_len": 4096,
        "num_steps": 644,
    },
}
COMMON = {
    "dtype": "bf16",
    "fused_optimizer": True,
    "activation_checkpointing": True,
    "clip_grad_norm": None,
    "train_on_input": True,
    "seed": 42,
}
# One epoch of upstream's rows, unpacked: the write-up's steps x its global batch (issue #56:
# ~3.8M phase-1 examples; the write-up: 1.89M phase-2 rows; ~165K phase-3 rows).
UPSTREAM_ROWS = {"phase1": 3_870_720, "phase2": 1_894_400, "phase3": 164_864}
# What smaller profiles may change: sizes, steps, devices and the optimizer knobs a CPU needs.
SCALE_KEYS = {
    "num_steps",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "nproc_per_node",
    "max_seq_len",
    "lr",
    "warmup_steps",
    "betas",
    "clip_grad_norm",
    "dtype",
    "device",
    "fused_optimizer",
    "activation_checkpointing",
    "compile",
    "packed",
}


@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3"])
def test_full_phases_carry_the_writeup_values(phase):
    cfg = getattr(load_config("full"), phase)
    t = cfg.train
    got = {
        "global_batch": t.batch_size * t.gradient_accumulation_steps * t.nproc_per_node,
        "lr": t.lr,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "max_seq_len": t.max_seq_len,
        # one epoch of upstream's rows at upstream's global batch, not packed
        "num_steps": schedule.steps_per_epoch(UPSTREAM_ROWS[phase], schedule.global_batch(cfg)),
    }
    assert got == PAPER[phase]
    assert (t.epochs, t.num_steps) == (1, None)  # defined by the data, steps derived
    assert {k: getattr(t, k) for k in COMMON} == COMMON
    assert cfg.recipe == "full_finetune_distributed"  # FSDP2


def test_unpacked_epochs_of_upstreams_rows_give_the_writeups_steps():
    steps = schedule.steps_per_epoch
    assert [steps(3_870_720, 480), steps(1_894_400, 256), steps(164_864, 256)] == [8064, 7400, 644]
    assert steps(3_870_000, 480) == 8062  # ~3.87M: the last, partial batch is left out
    phase = dataclasses.replace(load_config("full").phase2, checkpoint_every=1000)
    unpacked = dataclasses.replace(phase, train=dataclasses.replace(phase.train, packed=False))
    plan = schedule.phase_schedule(unpacked, [500] * 25_600)
    assert (plan.num_steps, plan.periods, plan.samples, plan.samples_left_out) == (
        100,
        1,
        25_600,
        0,
    )


@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3"])
def test_packed_epochs_derive_the_steps_from_the_packs(phase):
    cfg = getattr(load_config("full"), phase)
    t, batch = cfg.train, schedule.global_batch(cfg)
    # rows of a fixed length: rows // (max_seq_len // length) packs, steps = packs // batch
    length = {"phase1": 250, "phase2": 500, "phase3": 1000}[phase]
    rows = 40 * batch * (t.max_seq_len // length) + 7
    plan = schedule.phase_schedule(cfg, [length] * rows)
    packs = -(-rows // (t.max_seq_len // length))
    assert plan.samples == packs
    assert plan.num_steps == packs // batch == 40  # not the unpacked rows // batch
    assert plan.num_steps * batch + plan.samples_left_out == packs
    assert plan.periods == -(-40 // cfg.checkpoint_every)
    assert plan.period_samples == plan.steps_per_period * batch
    assert plan.tokens == round(rows * length * 40 * batch / packs)


def test_epochs_split_into_even_periods_and_report_what_is_left_out():
    assert schedule.epoch_periods(4000, 1000) == (4, 1000)
    assert schedule.epoch_periods(4003, 1000) == (5, 800)  # 3 steps left out
    assert schedule.epoch_periods(644, None) == (1, 644)
    phase = load_config("smoke").phase1
    epochs = dataclasses.replace(phase.train, num_steps=None, epochs=1, batch_size=2)
    plan = schedule.phase_schedule(dataclasses.replace(phase, train=epochs), [200] * 21)
    assert (plan.samples, plan.num_steps, plan.periods, plan.steps_per_period) == (21, 10, 5, 2)
    assert plan.samples_left_out == 1
    assert plan.metrics()["train_steps_planned"] == 10
    lengths = np.random.default_rng(0).integers(20, 200, 500).tolist()
    with pytest.raises(ValueError, match="less than one step"):
        schedule.phase_schedule(dataclasses.replace(phase, train=epochs), [200])
    plan = schedule.phase_schedule(phase, lengths)  # smoke: num_steps, periods reshuffle
    assert (plan.num_steps, plan.periods, plan.period_samples) == (4, 2, None)


def test_a_phase_is_either_steps_or_epochs():
    train = load_config("smoke").phase1.train
    with pytest.raises(ConfigError, match="set one of num_steps and epochs"):
        dataclasses.replace(train, epochs=1)
    with pytest.raises(ConfigError, match="set one of num_steps and epochs"):
        dataclasses.replace(train, num_steps=None)
    with pytest.raises(ConfigError, match="phase1.*set one of num_steps and epochs"):
        load_config("smoke", {"phase1.train.epochs": 1})
    steps = {"phase1.train": {"epochs": None, "num_steps": 8064}, "phase1.checkpoint_every": 1008}
    assert load_config("full", steps).phase1.train.num_steps == 8064  # the write-up's, unpacked
    epochs = dataclasses.replace(train, num_steps=None, epochs=1)
    assert PhaseConfig(train=epochs, checkpoint_every=7).checkpoint_every == 7  # a bound


@pytest.mark.parametrize("profile", ["tiny", "smoke"])
@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3"])
def test_small_profiles_override_only_sizes_steps_and_devices(profile, phase):
    full = getattr(load_config("full"), phase).train
    small = getattr(load_config(profile), phase).train
    changed = {
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(full, f.name) != getattr(small, f.name)
    }
    # tiny's (and smoke's) phases 2 and 3 take the loss on answers only (measured: the ~60 sound
    # tokens of a question swamp its one-word answer, and predicting them erased phase 3's
    # knowledge); phase 1 trains on input, as upstream. Phase 2 weighs each answer equally
    # (measured: more held-out spoken answers, on real speech and on stand-in codes)
    answers_only = phase in ("phase2", "phase3")
    allowed = SCALE_KEYS | ({"train_on_input"} if answers_only else set())
    allowed |= {"loss_weighting"} if phase == "phase2" else set()
    assert changed <= allowed, changed - allowed
    assert small.weight_decay == full.weight_decay and small.train_on_input != answers_only


@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3"])
def test_small_is_full_on_one_gpu_with_the_global_batch_by_accumulation(phase):
    full, small = load_config("full"), load_config("small")
    t, f = getattr(small, phase).train, getattr(full, phase).train
    assert t.nproc_per_node == 1 and getattr(small, phase).recipe == "full_finetune_single_device"
    assert schedule.global_batch(getattr(small, phase)) == PAPER[phase]["global_batch"]
    assert t.gradient_accumulation_steps > 1
    assert (t.lr, t.weight_decay, t.max_seq_len, t.epochs) == (
        f.lr,
        f.weight_decay,
        f.max_seq_len,
        1,
    )
    assert {k: getattr(t, k) for k in COMMON} == COMMON
    assert small.base_model.hf_repo == "meta-llama/Llama-3.2-1B-Instruct"
    # the same data and benchmarks, fewer rows
    for key in ("published_phase1", "published_phase2", "published_phase3"):
        assert getattr(small.data, key) == getattr(full.data, key)
    assert small.eval.benchmarks == full.eval.benchmarks and small.eval.mc == full.eval.mc
    assert small.data.published_rows["phase2"] < UPSTREAM_ROWS["phase2"]
    assert all(v < 1 for v in small.data.published_phase1_languages.values())


def test_checkpoint_period_must_divide_the_steps():
    train = load_config("smoke").phase1.train
    with pytest.raises(ConfigError, match="checkpoint_every"):
        PhaseConfig(train=train, checkpoint_every=3)
    plan = schedule.phase_schedule(PhaseConfig(train=train, checkpoint_every=2), [50] * 100)
    assert plan.periods == train.num_steps // 2


def test_phase3_data_is_validated_naming_the_key():
    with pytest.raises(ConfigError, match="phase3_data.inaudible_fraction"):
        load_config("smoke", {"phase3_data.inaudible_fraction": 1.5})
    with pytest.raises(ConfigError, match="phase3_data.refusal_pool_siz"):
        load_config("smoke", {"phase3_data.refusal_pool_siz": 3})
    with pytest.raises(ConfigError, match="phase3_data.eval_inaudible"):
        load_config("smoke", {"phase3_data.eval_inaudible": 0})
    assert load_config("tiny").phase3_data.inaudible_fraction == 0.15
    assert load_config("full").phase3_data.refusal_source == "endpoint"
