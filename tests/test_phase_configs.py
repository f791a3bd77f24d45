"""The `full` phase configs carry the write-up's values exactly; smaller profiles change only
sizes, steps and devices."""

import dataclasses

import pytest

from ichigo_lib.config import ConfigError, PhaseConfig, TrainConfig, load_config

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
# What smaller profiles may change: sizes, steps, devices and the optimizer knobs a CPU needs.
SCALE_KEYS = {
    "num_steps",
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
        "num_steps": t.num_steps,
    }
    assert got == PAPER[phase]
    assert {k: getattr(t, k) for k in COMMON} == COMMON
    assert cfg.recipe == "full_finetune_distributed"  # FSDP2


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
    assert changed <= SCALE_KEYS, changed - SCALE_KEYS
    assert small.weight_decay == full.weight_decay and small.train_on_input


def test_checkpoint_period_must_divide_the_steps():
    train = load_config("smoke").phase1.train
    with pytest.raises(ConfigError, match="checkpoint_every"):
        PhaseConfig(train=train, checkpoint_every=3)
    assert PhaseConfig(train=train, checkpoint_every=2).num_checkpoints == train.num_steps // 2


def test_phase3_data_is_validated_naming_the_key():
    with pytest.raises(ConfigError, match="phase3_data.inaudible_fraction"):
        load_config("smoke", {"phase3_data.inaudible_fraction": 1.5})
    with pytest.raises(ConfigError, match="phase3_data.refusal_pool_siz"):
        load_config("smoke", {"phase3_data.refusal_pool_siz": 3})
    with pytest.raises(ConfigError, match="phase3_data.eval_inaudible"):
        load_config("smoke", {"phase3_data.eval_inaudible": 0})
    assert load_config("tiny").phase3_data.inaudible_fraction == 0.15
    assert load_config("full").phase3_data.refusal_source == "endpoint"
