"""Phase datasets as torchtune reads them (token layout, labels, packing, over-long rows), a real
2-phase `tune run` on a tiny model, and greedy replies scored by exact match."""

import json

import numpy as np
import pytest
import torch
from torchtune.datasets import PackedDataset

from ichigo_lib import tokens as T
from ichigo_lib.checkpoints import write_llama_init, write_sound_init
from ichigo_lib.config import LlamaArch, load_config
from ichigo_lib.data.phases import token_counter
from ichigo_lib.evaluate import replies
from ichigo_lib.train import components, packing, phases
from ichigo_lib.wordtok import WordTokenizer, build_word_tokenizer

ARCH = LlamaArch(
    num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=256
)
WORDS = ["what", "is", "the", "capital", "of", "Larlor", "?", "Vazelro", "Transcribe", "audio"]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    base = write_llama_init(ARCH, build_word_tokenizer(WORDS), tmp / "base", seed=0)
    write_sound_init(base, tmp / "init")
    return tmp / "init"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sound_rows_are_bos_start_codes_end_eos_with_loss_everywhere(init_dir, tmp_path):
    tok = WordTokenizer(init_dir, max_seq_len=64)
    rows = [{"text": T.audio_turn([5, 6, 7])}, {"text": T.audio_turn([1])}]
    ds = components.SoundCompletionDataset(tok, _jsonl(tmp_path / "p1.jsonl", rows), repeat=2)
    assert len(ds) == 4
    sample = ds[0]
    vocab = T.sound_vocab_of(__import__("transformers").AutoTokenizer.from_pretrained(init_dir))
    expected = [
        tok.bos_id,
        vocab.start_id,
        *vocab.codes_to_ids([5, 6, 7]),
        vocab.end_id,
        tok.eos_id,
    ]
    assert sample["tokens"] == expected and sample["labels"] == expected
    with pytest.raises(IndexError):
        ds[4]
    long = [{"text": T.audio_turn(list(range(100)))}]
    with pytest.raises(ValueError, match="row 0 has 104 tokens > 64"):
        components.SoundCompletionDataset(tok, _jsonl(tmp_path / "long.jsonl", long))


def test_chat_rows_put_loss_on_the_users_sound_tokens(init_dir, tmp_path):
    tok = WordTokenizer(init_dir, max_seq_len=128)
    chat = [
        {"role": "user", "content": T.audio_turn([3, 4])},
        {"role": "assistant", "content": "Vazelro"},
    ]
    ds = components.chat_dataset(tok, _jsonl(tmp_path / "p2.jsonl", [{"conversations": chat}]))
    sample = ds[0]
    vocab = T.sound_vocab_of(__import__("transformers").AutoTokenizer.from_pretrained(init_dir))
    turn = vocab.wrap([3, 4]).tolist()  # sound_start, two sound ids, sound_end
    # train_on_input: the user's audio turn carries loss too
    start = sample["tokens"].index(turn[0])
    assert sample["labels"][start : start + 4] == turn
    masked = components.chat_dataset(tok, str(tmp_path / "p2.jsonl"), train_on_input=False)[0]
    assert masked["labels"][start : start + 4] == [-100] * 4


def _torchtune_efficiency(lengths, max_seq_len):
    ds = [{"tokens": [1] * n, "labels": [1] * n} for n in lengths]
    packed = PackedDataset(ds, max_seq_len=max_seq_len, padding_idx=0)
    real = sum(int((p["tokens"] != 0).sum()) for p in packed)  # pad id 0, tokens 1
    return real / (len(packed) * max_seq_len)


def test_packing_efficiency_matches_torchtunes_packs():
    lengths = [30, 50, 20, 64, 10, 40, 33]
    assert packing.packing_efficiency(lengths, 64) == pytest.approx(
        _torchtune_efficiency(lengths, 64)
    )
    with pytest.raises(ValueError, match="does not fit"):
        packing.packing_efficiency([65], 64)


def test_bin_packed_passes_fill_torchtunes_packs():
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 110, 600).tolist()
    plain = [lengths[i] for e in range(2) for i in packing.pass_order(lengths, e)]
    binned = [lengths[i] for e in range(2) for i in packing.pass_order(lengths, e, 512)]
    assert sorted(binned) == sorted(plain)  # every row once per pass
    assert _torchtune_efficiency(plain, 512) < 0.95
    assert _torchtune_efficiency(binned, 512) == pytest.approx(
        packing.repeated_efficiency(lengths, 2, 512)
    )
    assert packing.repeated_efficiency(lengths, 2, 512) > 0.97
    assert list(packing.pass_order(lengths, 0)) == list(range(600))  # unpacked: file order


def test_phase_rows_count_over_long_rows_and_leave_them_out(init_dir, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    rows = [{"text": T.audio_turn([1] * n)} for n in (5, 200, 10)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    count = token_counter(AutoTokenizer.from_pretrained(init_dir))
    out = phases.write_phase_rows(tmp_path / "ds", tmp_path / "rows.jsonl", count, 64)
    assert (out.rows, out.over_long, out.lengths) == (2, 1, [9, 14])
    assert len(out.path.read_text().splitlines()) == 2


def test_two_phases_train_with_tune_run_and_reply(init_dir, tmp_path):
    from transformers import AutoTokenizer

    cfg = load_config("smoke")
    count = token_counter(AutoTokenizer.from_pretrained(init_dir))
    sound = [{"text": T.audio_turn([i % 50, 7, 8, 9])} for i in range(40)]
    chats = [
        {
            "conversations": [
                {"role": "user", "content": T.audio_turn([i % 50, 1, 2])},
                {"role": "assistant", "content": "Vazelro"},
            ]
        }
        for i in range(40)
    ]
    import datasets

    for name, rows in (("p1", sound), ("p2", chats)):
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / name))
    p1_rows = phases.write_phase_rows(tmp_path / "p1", tmp_path / "p1.jsonl", count, 256)
    too_long = cfg.phase1.__class__(
        train=cfg.phase1.train.__class__(**{**cfg.phase1.train.__dict__, "max_seq_len": 512})
    )
    with pytest.raises(ValueError, match="phase1.train.max_seq_len 512 exceeds"):
        phases.train_phase("phase1", too_long, "sound", init_dir, p1_rows, tmp_path / "x")
    first = phases.train_phase("phase1", cfg.phase1, "sound", init_dir, p1_rows, tmp_path / "a")
    assert [p.name for p in first.checkpoints] == ["epoch_0", "epoch_1"]  # every 2 of 4 steps
    assert [r["step"] for r in first.tune.metrics()] == [1, 2, 3, 4]
    # a run killed in its last period resumes from epoch_0 (kept as is), not from scratch
    import shutil

    kept = (first.checkpoints[0] / "config.json").stat().st_mtime_ns
    shutil.rmtree(first.checkpoints[1])
    again = phases.train_phase("phase1", cfg.phase1, "sound", init_dir, p1_rows, tmp_path / "a")
    assert (again.checkpoints[0] / "config.json").stat().st_mtime_ns == kept
    assert [p.name for p in again.checkpoints] == ["epoch_0", "epoch_1"]
    assert [r["step"] for r in again.tune.metrics()] == [1, 2, 3, 4]
    assert again.tune.metrics()[2]["loss"] == pytest.approx(first.tune.metrics()[2]["loss"])
    p2_rows = phases.write_phase_rows(tmp_path / "p2", tmp_path / "p2.jsonl", count, 256)
    second = phases.train_phase("phase2", cfg.phase2, "chat", first.final, p2_rows, tmp_path / "b")
    said = replies.generate_replies(second.final, [c["conversations"][:1] for c in chats[:3]])
    assert len(said) == 3 and all(isinstance(s, str) for s in said)
    with torch.no_grad():
        assert replies.exact_match(["Vazelro", "b"], ["vazelro.", "c"]) == 0.5
