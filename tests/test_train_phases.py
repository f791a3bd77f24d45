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


def _first_fit_reference(lengths, epoch, pack_len):
    """pass_order's packing written plainly: first fit, longest first, packs shuffled."""
    rng = np.random.default_rng(epoch)
    order = rng.permutation(len(lengths))
    packs, room = [], []
    for i in sorted(order.tolist(), key=lambda i: -lengths[i]):
        slot = next((p for p in range(len(packs)) if room[p] >= lengths[i]), None)
        if slot is None:
            slot = len(packs)
            packs.append([])
            room.append(pack_len)
        packs[slot].append(i)
        room[slot] -= lengths[i]
    return [i for p in rng.permutation(len(packs)) for i in packs[p]]


def test_pass_order_packs_first_fit_decreasing_exactly():
    rng = np.random.default_rng(3)
    for trial in range(60):
        pack_len = int(rng.choice([16, 64, 512]))
        lengths = rng.integers(1, pack_len + 1, int(rng.integers(0, 200))).tolist()
        for epoch in range(2):
            got = packing.pass_order(lengths, epoch, pack_len).tolist()
            assert got == _first_fit_reference(lengths, epoch, pack_len), (trial, epoch)
    with pytest.raises(ValueError, match="row 1 has 70 tokens, more than the pack length 64"):
        packing.pass_order([3, 70], 0, 64)


def test_counted_packs_are_the_packed_datasets_length(init_dir, tmp_path):
    tok = WordTokenizer(init_dir, max_seq_len=64)
    rng = np.random.default_rng(0)
    chats = [
        {
            "conversations": [
                {"role": "user", "content": "what is " + T.audio_turn(rng.integers(0, 512, n))},
                {"role": "assistant", "content": "Vazelro"},
            ]
        }
        for n in rng.integers(1, 40, 120)
    ]
    path = _jsonl(tmp_path / "c.jsonl", chats)
    count = token_counter(__import__("transformers").AutoTokenizer.from_pretrained(init_dir))
    lengths = [count(r) for r in chats]
    plain = components.ChatDataset(tok, path, train_on_input=True)
    assert lengths == [len(plain[i]["tokens"]) for i in range(len(chats))]  # EOS included
    sound = {"text": T.audio_turn([1, 2, 3])}
    one = components.SoundCompletionDataset(tok, _jsonl(tmp_path / "s.jsonl", [sound]))
    assert count(sound) == len(one[0]["tokens"])
    packed = components.chat_dataset(tok, path, repeat=3, packed=True, bin_pack=True)
    assert len(packed) == packing.count_packs(lengths, 3, 64)


def test_pass_slices_read_each_sample_once_across_ranks_and_periods():
    from ichigo_lib.train.sampler import PassSliceSampler

    data = list(range(103))
    seen = []
    for epoch in range(3):  # 3 periods of 32 samples over 2 ranks; 7 left out
        for rank in range(2):
            sampler = PassSliceSampler(data, 2, rank, samples=103, period_samples=32)
            sampler.set_epoch(epoch)
            assert len(sampler) == 16
            seen += list(sampler)
    assert len(seen) == len(set(seen)) == 96
    resumed = PassSliceSampler(data, 2, 1, samples=103, period_samples=32)
    resumed.set_epoch(2)
    assert list(resumed) == seen[-16:]  # a resumed run reads its epoch's slice
    with pytest.raises(ValueError, match="dataset has 103 samples, .* derived for 100"):
        PassSliceSampler(data, 2, 0, samples=100, period_samples=32)
    with pytest.raises(ValueError, match="do not split over 2 ranks"):
        PassSliceSampler(data, 2, 0, samples=103, period_samples=33)
    late = PassSliceSampler(data, 2, 0, samples=103, period_samples=32)
    late.set_epoch(3)
    with pytest.raises(ValueError, match="more epochs than the schedule's periods"):
        list(late)


def test_write_phase_rows_counts_in_processes_and_streams_the_same_rows(init_dir, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    rng = np.random.default_rng(1)
    rows = [
        {
            "conversations": [
                {"role": "user", "content": T.audio_turn(rng.integers(0, 512, n))},
                {"role": "assistant", "content": "Vazelro"},
            ],
            "source": i,
        }
        for i, n in enumerate(rng.integers(1, 60, 3000))
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    before = sorted(p.name for p in (tmp_path / "ds").iterdir())
    count = token_counter(AutoTokenizer.from_pretrained(init_dir))
    one = phases.write_phase_rows(tmp_path / "ds", tmp_path / "one.jsonl", count, 48)
    two = phases.write_phase_rows(tmp_path / "ds", tmp_path / "two.jsonl", count, 48, num_proc=2)
    lengths = [count(r) for r in rows]
    fits = [r for r, n in zip(rows, lengths, strict=True) if n <= 48]
    assert one.over_long == two.over_long == sum(n > 48 for n in lengths) > 0
    assert one.lengths == two.lengths == [n for n in lengths if n <= 48]
    lines = two.path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"conversations": r["conversations"]} for r in fits
    ]
    assert one.path.read_text() == two.path.read_text()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == before  # no cache files


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


def test_a_phase_of_one_epoch_trains_the_derived_steps_once_over_the_packs(init_dir, tmp_path):
    import dataclasses

    import datasets
    from transformers import AutoTokenizer

    phase = load_config("smoke").phase1
    train = dataclasses.replace(phase.train, num_steps=None, epochs=1)
    phase = dataclasses.replace(phase, train=train, checkpoint_every=4)
    rng = np.random.default_rng(2)
    sound = [{"text": T.audio_turn(rng.integers(0, 50, n))} for n in rng.integers(20, 120, 120)]
    datasets.Dataset.from_list(sound).save_to_disk(str(tmp_path / "p1"))
    count = token_counter(AutoTokenizer.from_pretrained(init_dir))
    rows = phases.write_phase_rows(tmp_path / "p1", tmp_path / "p1.jsonl", count, 256)
    run = phases.train_phase("phase1", phase, "sound", init_dir, rows, tmp_path / "a")
    plan = run.schedule
    assert plan.samples == packing.count_packs(rows.lengths, 1, 256)  # the sampler checked it
    assert plan.num_steps == plan.samples // 2 - (plan.samples // 2) % plan.periods
    log = run.tune.metrics()
    assert [r["step"] for r in log] == list(range(1, plan.num_steps + 1))
    assert len(run.checkpoints) == plan.periods == -(-(plan.samples // 2) // 4)
    # warmup then cosine to zero over exactly the derived steps
    assert log[0]["lr"] == pytest.approx(train.lr) and log[-1]["lr"] < 0.05 * train.lr
