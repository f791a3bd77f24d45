"""Phase datasets: plan, mix ratios, chat format, held-out disjointness, cards; the speech
workers (espeak-ng -> tiny WhisperVQ, WhisperSpeech adapters) and the whole build with resume."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from fixtures_hub import parquet_shards, published_chats

from ichigo_lib import tokens as T
from ichigo_lib.config import ConfigError, DataConfig, TinyVQArch, load_config
from ichigo_lib.data import build, phases, synth
from ichigo_lib.data.prompts import TRANSCRIPTION_PROMPTS
from ichigo_lib.speech import train_vq, whispervq
from ichigo_lib.wordtok import build_word_tokenizer
from ichigo_lib.world import WorldConfig, build_world

CFG = DataConfig(phase2_rows=1000, eval_questions=40, eval_sentences_per_language=3)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(num_countries=40, num_dialogues=200, sentences_per_language=40))


@pytest.fixture(scope="module")
def plan(world):
    return phases.speech_plan(world, CFG)


def _fake_codes(plan):
    rng = np.random.default_rng(0)
    return {u["index"]: rng.integers(0, 512, 10 + len(u["text"]) // 2) for u in plan.utterances}


def _fake_dialogues(plan):
    out = {}
    for d in plan.dialogues:
        out[d["index"]] = [
            {
                "role": m["role"],
                "content": T.audio_turn([1, 2, 3]) if m["role"] == "user" else m["content"],
            }
            for m in d["conversations"]
        ]
    return out


def _tokenizer(world):
    tok = build_word_tokenizer(world.vocabulary())
    T.extend_hf_tokenizer(tok)
    return tok


@pytest.fixture(scope="module")
def rows(plan):
    return phases.build_phase_datasets(plan, _fake_codes(plan), _fake_dialogues(plan), CFG)


def test_mix_counts_split_exactly_and_refuse_bad_mixes():
    assert phases.mix_counts(1000, (0.7, 0.2, 0.1)) == {
        "speech_instruction": 700,
        "transcription": 200,
        "text": 100,
    }
    assert sum(phases.mix_counts(333, (0.7, 0.2, 0.1)).values()) == 333
    with pytest.raises(ValueError, match="summing to 1"):
        phases.mix_counts(10, (0.5, 0.2, 0.1))


def test_data_config_is_validated():
    with pytest.raises(ConfigError, match="t2s"):
        DataConfig(path="t2s")
    with pytest.raises(ConfigError, match="mix"):
        DataConfig(mix=(0.7, 0.2, 0.2))
    with pytest.raises(ConfigError, match="data.mixx"):
        load_config("smoke", {"data.mixx": [1, 0, 0]})
    for profile in ("smoke", "tiny", "full"):
        assert sum(load_config(profile).data.mix) == pytest.approx(1)


def test_phase2_mix_and_phase3_turn_split(rows):
    kinds = [r["kind"] for r in rows["phase2"]]
    assert len(kinds) == 1000
    for kind, share in zip(phases.KINDS, (0.7, 0.2, 0.1), strict=True):
        assert kinds.count(kind) / len(kinds) == pytest.approx(share, abs=0.01)
    turns = [r["turns"] for r in rows["phase3"]]
    assert sum(t == 2 for t in turns) / len(turns) == pytest.approx(0.9, abs=0.02)
    assert all(t == 2 or t >= 4 for t in turns)


def test_rows_follow_the_chat_format(rows):
    for row in rows["phase1"]:
        assert row["text"].startswith(T.SOUND_START) and row["text"].endswith(T.SOUND_END)
        assert len(T.string_to_codes(row["text"])) > 0
    for row in rows["phase2"] + rows["phase3"] + rows["eval_speech_qa"]:
        chat = row["conversations"]
        assert [m["role"] for m in chat] == ["user", "assistant"] * (len(chat) // 2)
        assert all(m["content"].strip() for m in chat)
    by_kind = {k: [r for r in rows["phase2"] if r["kind"] == k] for k in phases.KINDS}
    for row in by_kind["speech_instruction"]:
        T.string_to_codes(row["conversations"][0]["content"])  # the whole user turn is audio
    for row in by_kind["transcription"]:
        prompt, turn = row["conversations"][0]["content"].split("\n")
        assert prompt in TRANSCRIPTION_PROMPTS
        T.string_to_codes(turn)
    prompts = {r["conversations"][0]["content"].split("\n")[0] for r in by_kind["transcription"]}
    assert prompts == set(TRANSCRIPTION_PROMPTS)
    for row in by_kind["text"]:
        assert T.SOUND_START not in phases.row_text(row)
    for row in rows["phase3"]:
        for m in row["conversations"]:
            assert (T.SOUND_START in m["content"]) == (m["role"] == "user")


def test_heldout_sets_share_no_sentence_with_training(world, plan, rows):
    heldout = {q.question for q in world.qa if q.split == "heldout"}
    heldout |= {s.text for s in world.sentences if s.split == "heldout"}
    assert plan.heldout_texts() <= heldout
    assert len(rows["eval_speech_qa"]) == 40 and len(rows["eval_transcription"]) == 24
    for u in plan.utterances:
        if not u["use"].startswith("eval_"):
            assert u["text"] not in heldout, u
    for chat in plan.text_chats + [d["conversations"] for d in plan.dialogues]:
        assert not any(m["content"] in heldout for m in chat)
    for row in rows["phase2"]:
        if row["kind"] == "transcription":
            assert row["conversations"][1]["content"] not in heldout


def test_heldout_splits_by_cause_are_disjoint_as_claimed(world, plan, rows):
    heldout_phrasings = {q.question for q in world.qa if q.split == "heldout"}
    trained = {u["text"]: u for u in plan.utterances if u["use"] == "instruction"}
    training_voices = {str(u["voice"]) for u in trained.values()}
    heldout_voices_ = {str(u["voice"]) for u in plan.utterances if u["use"] == "eval_instruction"}
    assert not training_voices & heldout_voices_
    causes = rows["eval_speech_qa_causes"]
    assert {r["split"] for r in causes} == {"voice", "phrasing"}
    for r in causes:
        u = plan.utterances[r["source"]]
        assert r["question"] == u["text"] and r["conversations"][1]["content"] == u["answer"]
        if r["split"] == "voice":  # a question phase 2 trains on, in a held-out voice
            assert u["text"] in trained and u["text"] not in heldout_phrasings
            assert str(u["voice"]) in heldout_voices_
        else:  # a held-out question in a voice drawn like the training ones
            assert u["text"] in heldout_phrasings and u["text"] not in trained
            assert str(u["voice"]) not in heldout_voices_
    both = {r["question"] for r in rows["eval_speech_qa"]}
    assert {r["question"] for r in causes if r["split"] == "phrasing"} <= both


def test_failed_rows_are_left_out(plan):
    codes = _fake_codes(plan)
    lost = [u["index"] for u in plan.utterances if u["use"] == "phase1"][:5]
    for i in lost:
        del codes[i]
    dialogues = _fake_dialogues(plan)
    del dialogues[plan.dialogues[0]["index"]]
    out = phases.build_phase_datasets(plan, codes, dialogues, CFG)
    phase1 = sum(u["use"] == "phase1" for u in plan.utterances)
    assert len(out["phase1"]) == phase1 - 5
    assert len(out["phase3"]) == len(plan.dialogues) - 1


def test_cards_count_over_long_rows_and_fractions(world, rows):
    count = phases.token_counter(_tokenizer(world))
    row = rows["phase1"][0]
    assert count(row) == len(T.string_to_codes(row["text"])) + 4  # BOS start .. end EOS
    lengths = [count(r) for r in rows["phase2"]]
    card = phases.dataset_card("phase2", rows["phase2"], lengths, 20, failed=3)
    assert card["over_long_rows"] == sum(n > 20 for n in lengths) > 0
    assert card["failed_rows_left_out"] == 3
    assert card["kind_fractions"]["speech_instruction"] == pytest.approx(0.7, abs=0.01)
    assert card["tokens_max"] == max(lengths)


# -- speech workers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantizer(tmp_path_factory):
    arch = TinyVQArch(n_state=32, n_head=2, encoder_layers=1, codebook_dim=8)
    vq = train_vq.build_tiny_whispervq(arch, whispervq.CharCodec("abc"), seed=0)
    return str(vq.save(tmp_path_factory.mktemp("vq") / "vq.model"))


def test_bad_texts_are_rejected_with_a_reason():
    assert synth.check_row_text({"text": "  "}) == "empty text"
    assert "over-long" in synth.check_row_text({"text": "a" * 2000})
    chat = {
        "conversations": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]
    }
    assert synth.check_row_text(chat) == "empty text"
    assert synth.check_row_text({"text": "Hello there."}) is None


def test_synth_spec_is_validated(quantizer):
    with pytest.raises(ValueError, match="backend"):
        synth.SynthSpec(quantizer, backend="festival")
    with pytest.raises(ValueError, match="t2s"):
        synth.SynthSpec(quantizer, path="t2s")


def test_espeak_worker_speaks_rows_and_conversations(quantizer, plan):
    state = synth.init_worker(quantizer=quantizer)
    row = next(u for u in plan.utterances if u["lang"] == "de")
    out = synth.speak_row(row, state)
    seconds = state.times.audio_seconds
    assert len(out["tokens"]) == pytest.approx(25 * seconds, abs=1)
    assert state.times.tts > 0 and state.times.resample > 0 and state.times.encode > 0
    dialogue = plan.dialogues[0]
    chat = synth.speak_conversation(dialogue, state)["conversations"]
    for before, after in zip(dialogue["conversations"], chat, strict=True):
        if before["role"] == "user":
            assert len(T.string_to_codes(after["content"])) > 10
        else:
            assert after == before


def test_whisperspeech_paths_resample_24k_and_take_t2s_tokens(quantizer, monkeypatch):
    calls = []

    class FakeT2S:
        def generate(self, text, cps, lang, show_progress_bar):
            calls.append(("t2s", text, lang, cps))
            return torch.arange(30)[None] % 512

    class FakePipeline:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))
            self.t2s = FakeT2S()

        def generate(self, text, lang, cps):
            calls.append(("tts", text, lang))
            t = torch.arange(24_000 * 2) / 24_000
            return (0.3 * torch.sin(2 * np.pi * 220 * t) * (1 + torch.sin(3 * t)))[None]

    module = types.ModuleType("whisperspeech.pipeline")
    module.Pipeline = FakePipeline
    monkeypatch.setitem(sys.modules, "whisperspeech.pipeline", module)
    audio = synth.init_worker(quantizer=quantizer, backend="whisperspeech", t2s_model="r:t2s.model")
    codes = audio.tokens("Hallo", "de")
    assert len(codes) == 50  # 2 s at 24 kHz -> 16 kHz -> 25 tokens/s
    assert calls[0] == ("init", {"device": "cpu", "t2s_ref": "r:t2s.model"})
    direct = synth.init_worker(quantizer=quantizer, backend="whisperspeech", path="t2s")
    assert direct.tokens("Hallo", "de").tolist() == list(range(30))
    assert direct._vq is None  # the T2S path never loads Whisper
    assert calls[-1] == ("t2s", "Hallo", "de", 15.0)
    # training rows take the T2S path; held-out rows are always spoken and encoded
    trained = synth.speak_row({"text": "Hallo", "lang": "de", "use": "instruction"}, direct)
    assert trained["tokens"] == list(range(30)) and direct._vq is None
    held = synth.speak_row({"text": "Hallo", "lang": "de", "use": "eval_instruction"}, direct)
    assert len(held["tokens"]) == 50 and calls[-1] == ("tts", "Hallo", "de")
    score = synth.agreement([codes.tolist()], [list(range(30))])
    assert 0 <= score["agreement"] <= 1 and score["length_ratio"] == pytest.approx(30 / 50)


def test_agreement_is_one_for_identical_tokens():
    assert synth.agreement([[1, 2, 3]], [[1, 2, 3]])["agreement"] == 1.0
    with pytest.raises(ValueError, match="1 audio-path and 2"):
        synth.agreement([[1]], [[1], [2]])


def test_build_merges_a_shard_job_writes_every_dataset_and_reruns_reuse_the_speech(
    world, quantizer, tmp_path
):
    small = build_world(WorldConfig(num_countries=8, num_dialogues=10, sentences_per_language=4))
    cfg = load_config("smoke").data
    cfg = DataConfig(**{**cfg.__dict__, "num_workers": 0, "phase2_rows": 20, "eval_questions": 2})
    speech = load_config("smoke").speech
    count = phases.token_counter(_tokenizer(small))
    plan = phases.speech_plan(small, cfg)
    job = build.speak_plan(
        plan, cfg, speech, quantizer, tmp_path, shard_range="0:1", progress=False
    )
    assert job["utterances"].shards_done == 1 < len(plan.utterances) // cfg.rows_per_shard
    first = build.build_phase_data(small, cfg, speech, quantizer, tmp_path, count, progress=False)
    assert first.reports["utterances"].shards_reused == 1  # the other job's shard is merged in
    assert set(first.cards) == {
        "phase1",
        "phase2",
        "phase3",
        "eval_speech_qa",
        "eval_speech_qa_causes",
        "eval_transcription",
    }
    assert first.cards["phase2"]["rows"] == 20
    assert first.audio_seconds_per_second > 0
    import datasets

    on_disk = datasets.load_from_disk(str(first.paths["phase3"]))
    assert on_disk.num_rows == len(first.rows["phase3"]) == 10
    again = build.build_phase_data(small, cfg, speech, quantizer, tmp_path, count, progress=False)
    assert all(r.rows_processed == 0 for r in again.reports.values())
    assert again.rows == first.rows


def test_bench_prints_stage_and_worker_tables():
    from ichigo_lib.data import bench

    text = bench.bench_data(load_config("smoke"), None, rows=6, workers=[0])
    assert "WhisperVQ encode" in text and "speedup" in text
    lines = text.splitlines()
    header = lines.index("whole pipeline (worker start-up included):") + 1
    assert lines[header].split() == ["workers", "seconds", "rows_per_s", "audio_s_per_s", "speedup"]
    assert float(lines[header + 1].split()[-1]) == 1.0


def test_transcription_token_variant_replaces_only_the_prompts(rows):
    variant = phases.with_transcription_token(rows["phase2"], "<|transcribe|>")
    assert len(variant) == len(rows["phase2"])
    for before, after in zip(rows["phase2"], variant, strict=True):
        if before["kind"] != "transcription":
            assert after == before
            continue
        user = after["conversations"][0]["content"]
        assert user.startswith("<|transcribe|>" + T.SOUND_START)
        assert not any(p in user for p in TRANSCRIPTION_PROMPTS)
        assert after["conversations"][1] == before["conversations"][1]
        assert T.string_to_codes(user.removeprefix("<|transcribe|>")).size


def test_published_chats_become_the_books_rows_through_arrow(world, tmp_path):
    from ichigo_lib.data import hub

    published = published_chats(3000)
    parquet_shards(published, tmp_path / "hub")
    count = phases.token_counter(_tokenizer(world))
    out = hub.prepare_published("phase3", str(tmp_path / "hub"), tmp_path / "p3", count, 40, 2)
    # the shards in file order, each row as notebook 02 writes its own
    order = [r for k in range(3) for r in published[k::3]]
    expected = [{"conversations": r["conversations"], "source": -1, "turns": 1} for r in order]
    assert out.dataset.num_rows == 3000 and out.dataset.to_list() == expected
    lengths = [count(r) for r in expected]
    assert out.lengths.tolist() == lengths
    assert out.card["over_long_rows"] == sum(n > 40 for n in lengths) > 0  # counted, kept
    assert out.card["rows"] == 3000 and out.card["published"] == str(tmp_path / "hub")
    assert not list(tmp_path.glob(".p3*"))  # no work files left beside the dataset
    # the same rows through one process, and the phase-2 layout (no turns)
    again = hub.prepare_published("phase2", str(tmp_path / "hub"), tmp_path / "p2", count, 40)
    assert again.dataset.column_names == ["conversations", "source"]
    assert again.dataset["conversations"][:] == [r["conversations"] for r in expected]
    # a row budget keeps a seeded sample, in order, with its own lengths
    budget = hub.prepare_published(
        "phase2", str(tmp_path / "hub"), tmp_path / "b", count, 40, rows=500
    )
    kept = budget.dataset["conversations"][:]
    assert len(kept) == 500 and len(budget.lengths) == 500 and budget.card["rows"] == 500
    position = {json.dumps(r["conversations"]): i for i, r in enumerate(expected)}
    where = [position[json.dumps(c)] for c in kept]
    assert where == sorted(where) and budget.lengths.tolist() == [lengths[i] for i in where]


def test_published_sound_rows_read_one_directory_per_language(world, tmp_path):
    import datasets

    from ichigo_lib.data import hub

    turns = {"english": [T.audio_turn([5, 6]), T.audio_turn([7])], "dutch": [T.audio_turn([9])]}
    for lang, texts in turns.items():
        parquet_shards([{"text": t} for t in texts], tmp_path / "raw" / lang, shards=1)
    count = phases.token_counter(_tokenizer(world))
    out = hub.prepare_published(
        "phase1",
        str(tmp_path / "raw"),
        tmp_path / "p1",
        count,
        512,
        languages={"english": 1.0, "dutch": 1.0},
    )
    assert out.dataset.to_list() == [
        {"text": t, "lang": lang, "source": -1} for lang, texts in turns.items() for t in texts
    ]
    assert out.lengths.tolist() == [6, 5, 5] and out.card["lang_fractions"]["dutch"] == 1 / 3
    half = hub.prepare_published(
        "phase1", str(tmp_path / "raw"), tmp_path / "p1", count, 512, languages={"english": 0.5}
    )
    assert half.dataset["text"][:] in ([turns["english"][0]], [turns["english"][1]])
    # codes (the pipeline's {index, tokens} rows) and a save_to_disk directory load too
    datasets.Dataset.from_list([{"index": 7, "tokens": [1, 2, 512]}]).save_to_disk(
        str(tmp_path / "codes")
    )
    codes = hub.prepare_published("phase1", str(tmp_path / "codes"), tmp_path / "c", count, 512)
    assert codes.dataset["text"][:] == [T.audio_turn([1, 2, 512])]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (
            [{"prompt": "x"}],
            r"phase2 expects a column 'conversations' or 'messages', found \['prompt'\]",
        ),
        (
            [{"conversations": [{"role": "user", "content": T.codes_to_string([3])}]}],
            r"row 1: 'conversations'\[0\]: sound tokens outside a <\|sound_start\|>",
        ),
        (
            [{"conversations": [{"role": "user", "content": T.audio_turn([3])[:-3]}]}],
            r"row 1: 'conversations'\[0\]: sound tokens outside",
        ),
        (
            [{"conversations": [{"from": "human", "value": "hi"}]}],
            r"row 1: 'conversations'\[0\]: a message needs 'role' and 'content'",
        ),
        (
            [{"conversations": [{"role": "robot", "content": "hi"}]}],
            r"row 1: 'conversations'\[0\]: role 'robot'",
        ),
        ([{"conversations": []}], r"row 1: 'conversations': expected a non-empty list"),
        (
            [{"conversations": [{"role": "user", "content": T.audio_turn([])}]}],
            r"row 1: 'conversations'\[0\]: empty audio turn",
        ),
    ],
)
def test_bad_published_chats_name_the_dataset_row_and_column(world, tmp_path, rows, match):
    import datasets

    from ichigo_lib.data import hub

    good = published_chats(1)
    if "conversations" in rows[0]:
        rows = [{"conversations": good[0]["conversations"]}, *rows]
    datasets.Dataset.from_list(rows).to_json(str(tmp_path / "bad.jsonl"))
    count = phases.token_counter(_tokenizer(world))
    earlier = hub.prepare_published(
        "phase2", _write(good, tmp_path / "ok.jsonl"), tmp_path / "p2", count, 64
    )
    with pytest.raises(hub.HubDataError, match=str(tmp_path / "bad.jsonl") + ".*" + match):
        hub.prepare_published("phase2", str(tmp_path / "bad.jsonl"), tmp_path / "p2", count, 64)
    assert datasets.load_from_disk(str(earlier.path)).num_rows == 1  # nothing produced is lost


def _write(rows, path):
    import datasets

    datasets.Dataset.from_list(rows).to_json(str(path))
    return str(path)


def test_bad_published_sound_rows_name_the_row_and_column(world, tmp_path):
    from ichigo_lib.data import hub

    count = phases.token_counter(_tokenizer(world))
    bare = [{"text": T.audio_turn([5])}, {"text": T.codes_to_string([7])}]
    with pytest.raises(hub.HubDataError, match=r"row 1: 'text': not wrapped in <\|sound_start\|>"):
        hub.prepare_published(
            "phase1", _write(bare, tmp_path / "a.jsonl"), tmp_path / "p", count, 64
        )
    words = [{"text": T.SOUND_START + "hello" + T.SOUND_END}]
    with pytest.raises(hub.HubDataError, match=r"row 0: 'text': expected a sound token"):
        hub.prepare_published(
            "phase1", _write(words, tmp_path / "b.jsonl"), tmp_path / "p", count, 64
        )
    codes = [{"index": 0, "tokens": [1, 600]}]
    with pytest.raises(hub.HubDataError, match=r"row 0: 'tokens': code 600"):
        hub.prepare_published(
            "phase1", _write(codes, tmp_path / "c.jsonl"), tmp_path / "p", count, 64
        )
    parquet_shards(bare, tmp_path / "raw" / "polish", shards=1)
    with pytest.raises(hub.HubDataError, match=r"raw/polish: row 1: 'text': not wrapped"):
        hub.prepare_published(
            "phase1", str(tmp_path / "raw"), tmp_path / "p", count, 64, languages={"polish": 1.0}
        )
    with pytest.raises(hub.HubDataError, match=r"german: no parquet/json/arrow files"):
        hub.prepare_published(
            "phase1", str(tmp_path), tmp_path / "p", count, 64, languages={"german": 1.0}
        )
    assert not (tmp_path / "p").exists()


def test_a_published_phase_replaces_the_worlds_rows_and_is_not_spoken(world, tmp_path):
    import datasets

    datasets.Dataset.from_list([{"index": 0, "tokens": [4, 5]}]).to_parquet(
        str(tmp_path / "p1.parquet")
    )
    cfg = DataConfig(**{**CFG.__dict__, "published_phase1": str(tmp_path / "p1.parquet")})
    plan = phases.speech_plan(world, cfg)
    assert not [u for u in plan.utterances if u["use"] == "phase1"]
    assert [u for u in plan.utterances if u["use"] == "instruction"]
