"""Phase-3 inaudible input: the generator (ranges, length matching, seeding, never a real
sequence), the phase-3 mix, the refusal pool, is_refusal, and refusals written by a real HTTP
server on 127.0.0.1 (timeouts, 5xx, malformed replies, no endpoint)."""

import dataclasses

import numpy as np
import pytest
from http_stub import Reply, chat, serve

from ichigo_lib import tokens as T
from ichigo_lib.config import Phase3DataConfig, load_config
from ichigo_lib.data import inaudible as I
from ichigo_lib.data import refusals as R
from ichigo_lib.llm_client import ChatClient, ChatEndpoint, EndpointError, EndpointRefused
from ichigo_lib.world import build_world, words

RNG = np.random.default_rng(7)
LENGTHS = [int(x) for x in RNG.integers(20, 120, size=300)]


def speech_rows(n=40, turns=2, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        chat_ = []
        for _ in range(turns if i % 10 else 4):
            codes = rng.integers(0, 512, size=int(rng.integers(20, 60)))
            chat_ += [
                {"role": "user", "content": T.audio_turn(codes)},
                {"role": "assistant", "content": "Parvel"},
            ]
        rows.append({"conversations": chat_, "turns": len(chat_) // 2, "source": i})
    return rows


def test_codes_are_uniform_over_0_to_512_and_lengths_come_from_the_sample():
    seqs = I.inaudible_sequences(LENGTHS, 2000, seed=1)
    codes = np.concatenate(seqs)
    assert codes.min() == 0 and codes.max() == 512  # the mask code 512 included
    counts = np.bincount(codes, minlength=513)
    assert counts.size == 513 and counts.min() > 0
    assert {len(s) for s in seqs} <= set(LENGTHS)
    from scipy.stats import chisquare

    assert chisquare(counts).pvalue > 0.001


def test_length_distribution_matches_ks_on_1000_samples():
    seqs = I.inaudible_sequences(LENGTHS, 1000, seed=3)
    ks = I.length_match(LENGTHS, [len(s) for s in seqs])
    assert ks.pvalue >= 0.05 and ks.n_generated == 1000
    shifted = I.length_match(LENGTHS, [x + 15 for x in LENGTHS])
    assert shifted.pvalue < 0.05  # the test can fail


def test_seeded_same_seed_same_sequences_other_seed_different():
    a = I.inaudible_sequences(LENGTHS, 20, seed=5)
    b = I.inaudible_sequences(LENGTHS, 20, seed=5)
    c = I.inaudible_sequences(LENGTHS, 20, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_never_emits_a_real_sequence():
    # length 1: only 513 possible sequences; exclude 500 of them
    real = [np.array([c]) for c in range(500)]
    seqs = I.inaudible_sequences([1], 13, seed=0, exclude=real)
    assert sorted(int(s[0]) for s in seqs) == list(range(500, 513))
    with pytest.raises(ValueError, match="distinct inaudible sequences"):
        I.inaudible_sequences([1], 14, seed=0, exclude=real)


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="no speech lengths"):
        I.inaudible_sequences([], 3, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        I.inaudible_sequences([0, 3], 3, seed=0)


def test_speech_sequences_read_every_spoken_user_turn_and_name_bad_rows():
    rows = speech_rows(5)
    assert len(I.speech_sequences(rows)) == sum(r["turns"] for r in rows)
    prompt = {"role": "user", "content": "Transcribe this\n" + T.audio_turn([1, 2, 3])}
    assert [s.tolist() for s in I.speech_sequences([{"conversations": [prompt]}])] == [[1, 2, 3]]
    bad = {
        "conversations": [{"role": "user", "content": "<|sound_start|><|sound_9999|><|sound_end|>"}]
    }
    with pytest.raises(ValueError, match="row 1: malformed audio turn"):
        I.speech_sequences([rows[0], bad])


def test_inaudible_turn_goes_between_exchanges_never_first():
    conv = speech_rows(2)[1]["conversations"]  # two exchanges
    out = I.with_inaudible_turn(conv, np.array([4, 5]), "Sorry.", position=1)
    assert out[:2] == conv[:2] and out[4:] == conv[2:]
    assert out[2] == {"role": "user", "content": T.audio_turn([4, 5])}
    assert out[3] == {"role": "assistant", "content": "Sorry."}
    with pytest.raises(ValueError, match="position must be in 1..2"):
        I.with_inaudible_turn(conv, np.array([4]), "Sorry.", position=0)


def test_phase3_mix_fractions_counts_and_heldout_set():
    rows = speech_rows(200)
    cfg = Phase3DataConfig(
        inaudible_fraction=0.15, mid_conversation_fraction=0.1, eval_inaudible=50
    )
    pool = R.refusal_pool(60)
    mix = I.mix_phase3(rows, pool, cfg)
    kinds = mix.kind_fractions()
    assert kinds["inaudible"] == pytest.approx(0.15, abs=0.005)
    assert mix.counts["speech_conversations_with_inaudible_turn"] == 20
    assert mix.counts["rows"] == len(mix.rows) == 200 + mix.counts["inaudible_single_turn"]
    assert mix.counts["speech_conversations_2_turns"] == 180
    assert mix.counts["speech_conversations_4plus_turns"] == 20
    for row in mix.rows:
        msgs = row["conversations"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        refusals = [m["content"] for m in msgs if m["content"] in pool]
        if row["kind"] == "inaudible":
            assert row["turns"] == 1 and len(refusals) == 1
        elif row["kind"] == "speech+inaudible":
            assert len(refusals) == 1 and msgs[1]["content"] not in pool  # never first
        else:
            assert not refusals
    real = {s.tobytes() for s in I.speech_sequences(rows)}
    train = {s.tobytes() for s in I.speech_sequences(mix.rows)} - real
    held = [I.audio_codes(r["conversations"][0]["content"]) for r in mix.eval_rows]
    assert len(held) == 50 and [len(h) for h in held] == [r["length"] for r in mix.eval_rows]
    assert not ({h.tobytes() for h in held} & (real | train))
    again = I.mix_phase3(rows, pool, cfg)
    assert again.rows == mix.rows and again.eval_rows == mix.eval_rows


def test_refusal_pool_is_varied_and_in_the_tiny_vocabulary():
    pool = R.refusal_pool()
    assert len(set(pool)) == len(pool) >= 50
    assert len(R.refusal_pool(60, seed=1)) == 60
    assert R.refusal_pool(60, seed=1) != R.refusal_pool(60, seed=2)
    with pytest.raises(ValueError, match="1..150"):
        R.refusal_pool(151)
    vocab = set(build_world(load_config("smoke").world).vocabulary())
    assert not {w for r in pool for w in words(r)} - vocab


def test_is_refusal_recognises_pool_and_key_phrases_not_answers():
    assert all(R.is_refusal(r) for r in R.refusal_pool())
    assert R.is_refusal("sorry , i did not catch that . could you please repeat it ?")
    assert R.is_refusal("I'm sorry, I couldn't hear anything but static.")
    for answer in ("Parvel.", "red", "3", "The capital of Larlor is Vazelro.", ""):
        assert not R.is_refusal(answer)


def writer(url, cache_dir=None, **options):
    options = {"max_retries": 1, "backoff_s": 0.01, "timeout_s": 2.0, **options}
    return ChatClient(ChatEndpoint(url=url, model="qwen2.5-72b", **options), cache_dir)


def test_generate_refusals_over_http_dedupes_and_caches(tmp_path):
    texts = ["Sorry, I could not hear that. Please say it again.", '"I cannot hear you, sorry."']

    def script(i, req):
        return Reply(body=chat(texts[i % 2] if i < 2 else f"Variant {i}: I could not hear you."))

    with serve(script) as stub:
        got, stats = R.generate_refusals(writer(stub.url, tmp_path, max_concurrency=1), 4)
        assert len(got) == 4 and got[1] == "I cannot hear you, sorry."
        assert stats == {
            "requests_sent": 4,
            "duplicates": 0,
            "failed_requests": 0,
            "failure_reasons": {},
        }
        assert "Variant 1" in stub.requests[0]["messages"][1]["content"]
        cached = writer(stub.url, tmp_path)
        assert R.generate_refusals(cached, 4)[0] == got and cached.requests == 0


def test_generate_refusals_retries_5xx_and_unusable_replies():
    def script(i, req):
        if i == 0:
            return Reply(503, {"error": "loading"})
        if i == 1:
            return Reply(body="{not json")  # malformed: retried by the client
        if i in (2, 3):
            return Reply(body=chat("Paris is the capital of France."))  # not a refusal: retried
        return Reply(body=chat(f"Sorry ({i}), I could not hear you."))

    with serve(script) as stub:
        client = writer(stub.url, max_retries=2, max_concurrency=1)
        got, stats = R.generate_refusals(client, 2)
    # request 1 fails 3 times (503, malformed, not a refusal), request 2 is asked again
    assert len(got) == 2 and stats["failed_requests"] == 1
    assert stats["failure_reasons"] == {"not a usable refusal": 1}
    assert client.requests == 6


def test_a_failing_writer_stops_after_one_empty_round_and_reports_why():
    with serve(lambda i, req: Reply(body=chat("Here is a poem."))) as stub:
        got, stats = R.generate_refusals(writer(stub.url), 2, max_requests=40)
    assert got == [] and stats["requests_sent"] == 2
    assert stats["failure_reasons"] == {"not a usable refusal": 2}
    with serve(lambda i, req: Reply(body=chat("late"), delay_s=0.6)) as stub:
        assert R.generate_refusals(writer(stub.url, timeout_s=0.2), 1)[1]["failure_reasons"] == {
            "timeout": 1
        }
    with serve(lambda i, req: Reply(500, {"error": "boom"})) as stub:
        assert R.generate_refusals(writer(stub.url), 1)[1]["failure_reasons"] == {"HTTP 500": 1}
    with serve(lambda i, req: Reply(401, {"error": "bad key"})) as stub:
        with pytest.raises(EndpointRefused, match="HTTP 401"):
            R.generate_refusals(writer(stub.url), 1)


def test_refusals_for_fills_what_the_writer_could_not_write_from_the_pool(tmp_path, capsys):
    def script(i, req):
        if "Variant 1." in req["messages"][1]["content"]:
            return Reply(body=chat("Sorry, I could not hear you."))
        return Reply(500, {"error": "boom"})

    with serve(script) as stub:
        cfg = Phase3DataConfig(
            refusal_source="endpoint", refusal_url=stub.url, refusal_model="q", refusal_pool_size=5
        )
        pool, summary = R.refusals_for(cfg, tmp_path, max_retries=0, backoff_s=0.0)
    assert len(pool) == 5 and len({R.normalise(p) for p in pool}) == 5
    assert pool[0] == "Sorry, I could not hear you." and all(map(R.is_refusal, pool))
    assert summary["from_pool"] == 4 and summary["failure_reasons"] == {"HTTP 500": 8}
    assert "wrote 1 of 5 phrasings" in capsys.readouterr().err


def test_no_refusal_endpoint_configured_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(R.URL_ENV, raising=False)
    monkeypatch.delenv(R.MODEL_ENV, raising=False)
    cfg = dataclasses.replace(load_config("full").phase3_data, refusal_url=None, refusal_model=None)
    with pytest.raises(EndpointError, match="phase3_data.refusal_url .*ICHIGO_REFUSAL_URL"):
        R.refusals_for(cfg, tmp_path)
    monkeypatch.setenv(R.URL_ENV, "http://127.0.0.1:9/v1")
    monkeypatch.setenv(R.MODEL_ENV, "m")
    assert R.refusal_endpoint(cfg).url == "http://127.0.0.1:9/v1"
    pool, summary = R.refusals_for(load_config("smoke").phase3_data, tmp_path)
    assert summary == {"source": "pool", "phrasings": 60} and len(pool) == 60


def test_refusals_for_writes_through_the_endpoint(tmp_path):
    with serve(lambda i, req: Reply(body=chat(f"Sorry {i}, I could not hear you."))) as stub:
        cfg = Phase3DataConfig(
            refusal_source="endpoint", refusal_url=stub.url, refusal_model="q", refusal_pool_size=5
        )
        pool, summary = R.refusals_for(cfg, tmp_path, max_retries=0)
    assert len(pool) == 5 and summary["requests"] == 5 and summary["source"] == "endpoint q"
    assert summary["from_pool"] == 0 and summary["failed_requests"] == 0


def test_phase2_rows_are_replayed_and_counted_in_the_fraction():
    rows = speech_rows(60)
    phase2 = [
        {"conversations": r["conversations"][:2], "kind": "speech_instruction", "source": 100 + i}
        for i, r in enumerate(speech_rows(50, seed=1))
    ]
    cfg = Phase3DataConfig(inaudible_fraction=0.2, eval_inaudible=5, phase2_replay_rows=40)
    mix = I.mix_phase3(rows, R.refusal_pool(60), cfg, phase2)
    replayed = [r for r in mix.rows if r["kind"] == "replay"]
    assert len(replayed) == mix.counts["replay_phase2"] == 40
    assert {r["source"] for r in replayed} <= {100 + i for i in range(50)}
    assert mix.kind_fractions()["inaudible"] == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError, match="phase2_replay_rows is 40 but only 3"):
        I.mix_phase3(rows, R.refusal_pool(60), cfg, phase2[:3])
