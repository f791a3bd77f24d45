"""Notebook 07's library: judge from config over HTTP, refusal precision/recall, transcription
prompts, streamed early-fusion and cascade replies, the latency comparison, the demo panel, and
the results tables read back from a manifest."""

import io
import time

import numpy as np
import pytest
import soundfile
from http_stub import Reply, chat, serve

from ichigo_lib import tokens as T
from ichigo_lib.checkpoints import write_llama_init, write_sound_init
from ichigo_lib.config import ConfigError, JudgeConfig, LlamaArch, load_config
from ichigo_lib.evaluate import judge as J
from ichigo_lib.evaluate import report as R
from ichigo_lib.evaluate import results, speech_chat
from ichigo_lib.evaluate.demo import DemoPanel, wav_from_bytes
from ichigo_lib.evaluate.refusal import refusal_scores
from ichigo_lib.llm_client import EndpointError
from ichigo_lib.runs import read_manifest, start_run
from ichigo_lib.speech.audio import AudioError
from ichigo_lib.speech.tts import Voice
from ichigo_lib.wordtok import build_word_tokenizer

ARCH = LlamaArch(
    num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=512
)
WORDS = ["what", "is", "the", "capital", "of", "Larlor", "?", "Vazelro", "green"]


# -- judge built from the profile ------------------------------------------------------------
def _judge_cfg(**kw):
    return JudgeConfig(kind="endpoint", backoff_s=0.01, **kw)


def test_reference_profile_gets_the_deterministic_judge_and_its_name():
    judge = R.make_judge(load_config("tiny").eval.judge, None)
    assert isinstance(judge, J.ReferenceMatchJudge) and judge.name == "reference-match"
    assert [r.rating for r in judge.score(["q"], ["green"], ["green"])] == [5]


def test_endpoint_judge_survives_5xx_and_garbage_then_parses_ratings(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-token")
    script = [
        Reply(503, {"error": "overloaded"}),
        Reply(200, "<html>not json</html>"),
        Reply(body=chat("Same colour as the reference.\nRating: 5")),
    ]
    odd = Reply(body=chat("I would rather not grade this."))  # no rating, every time

    with serve(lambda i, req: script[i] if i < len(script) else odd) as stub:
        cfg = _judge_cfg(
            url=stub.url,
            model="judge-x",
            api_key_env="MY_JUDGE_KEY",
            concurrency=1,
            max_retries=2,
        )
        judge = R.make_judge(cfg, tmp_path / "cache")
        out = judge.score(["q1", "q2"], ["green", "blue"], ["green", "green"])
        assert judge.name == "llm:judge-x"
        assert [r.rating for r in out] == [5, None] and out[1].raw == odd.body["choices"][0][
            "message"
        ]["content"]
        assert J.summarise(out)["judge_parse_failures"] == 1
        assert J.summarise(out)["judge_failures"] == 0
        assert stub.headers[0]["authorization"] == "Bearer secret-token"
        assert len(stub.requests) == 6  # 3 attempts each
        # cached: the good rating costs no request again, the unparsed reply is asked again
        again = R.make_judge(cfg, tmp_path / "cache").score(
            ["q1", "q2"], ["green", "blue"], ["green", "green"]
        )
        assert [r.rating for r in again] == [5, None] and len(stub.requests) == 9


def test_endpoint_judge_timeout_is_retried_then_recorded_as_a_failure():
    with serve(lambda i, req: Reply(body=chat("Rating: 3"), delay_s=0.5)) as stub:
        cfg = _judge_cfg(url=stub.url, model="slow", timeout_s=0.1, max_retries=1)
        judge = R.make_judge(cfg, None)
        (result,) = judge.score(["q"], ["a"], ["a"])
        assert result.failure == "timeout" and "timed out" in result.raw
        assert len(stub.requests) == 2


def test_endpoint_judge_without_url_explains_how_to_configure(monkeypatch):
    monkeypatch.delenv("ICHIGO_JUDGE_URL", raising=False)
    monkeypatch.delenv("ICHIGO_JUDGE_MODEL", raising=False)
    with pytest.raises(EndpointError, match="--judge-url"):
        R.make_judge(load_config("full").eval.judge, None)


def test_cli_url_turns_a_reference_profile_into_an_endpoint_judge():
    judge = R.make_judge(JudgeConfig(), None, url="http://127.0.0.1:9/v1", model="m")
    assert judge.name == "llm:m"


@pytest.mark.parametrize(
    "override, match",
    [
        ({"eval.judge.api_key_env": "sk-live-abc123"}, "name an environment variable"),
        ({"eval.judge.url": "127.0.0.1:8000"}, "http"),
        ({"eval.judge.concurrency": 0}, "concurrency"),
        ({"eval.judge.kind": "gpt4"}, "reference"),
        ({"eval.latency.clips": 1}, "clips"),
    ],
)
def test_judge_and_latency_config_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", override)


# -- refusal and transcription prompts --------------------------------------------------------
def test_refusal_precision_and_recall():
    refuses = lambda reply: "hear" in reply  # noqa: E731
    scores = refusal_scores(
        ["I cannot hear you", "I cannot hear you", "green"],
        ["green", "I cannot hear you"],
        refuses,
    )
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (2, 1, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["speech_false_refusal_rate"] == 0.5


def test_a_model_that_never_refuses_has_undefined_precision_and_zero_recall():
    scores = refusal_scores(["green"], ["blue"], lambda r: False)
    assert scores["precision"] is None and scores["recall"] == 0.0 and scores["f1"] == 0.0
    with pytest.raises(ValueError, match="both kinds"):
        refusal_scores([], ["blue"], lambda r: False)


def test_default_refusal_classifier_is_phase_3s():
    scores = refusal_scores(["Sorry, I could not hear that."], ["green"])
    assert scores["tp"] == 1 and scores["fp"] == 0


def test_transcription_prompt_is_swapped_and_the_audio_kept():
    turn = T.audio_turn([1, 2, 3])
    assert R.with_prompt(f"Transcribe the following audio clip\n{turn}", "Convert") == (
        f"Convert\n{turn}"
    )
    with pytest.raises(ValueError, match="row 7"):
        R.with_prompt("no audio here", "Convert", row=7)


# -- streamed replies on a tiny checkpoint ----------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    base = write_llama_init(ARCH, build_word_tokenizer(WORDS), tmp / "base", seed=0)
    write_sound_init(base, tmp / "sound")
    return base, tmp / "sound"


class Recorder:
    """A fake ASR that returns a fixed transcript and counts its calls."""

    def __init__(self, text):
        self.text, self.calls = text, 0

    def __call__(self, wav):
        self.calls += 1
        return self.text


def test_stream_yields_at_most_max_new_tokens_and_matches_reply(models):
    llm = speech_chat.ChatModel(models[0])
    msgs = [{"role": "user", "content": "what is the capital of Larlor ?"}]
    ids = list(llm.stream_ids(msgs, 5))
    assert 1 <= len(ids) <= 5 and all(isinstance(i, int) for i in ids)
    assert ids[:-1] == [i for i in ids[:-1] if i not in llm.stop_ids]
    expected = llm.tokenizer.decode([i for i in ids if i not in llm.stop_ids])
    assert llm.reply(msgs, 5) == expected.strip()


def test_cascade_really_passes_the_transcript_to_the_llm(models):
    llm = speech_chat.ChatModel(models[0])
    asr = Recorder("what is the capital of Larlor ?")
    cascade = speech_chat.Cascade(asr, llm, 4)
    wav = np.zeros(1600, np.float32)
    assert cascade.messages(wav) == [{"role": "user", "content": asr.text}]
    prompt = llm.tokenizer.decode(llm.prompt_ids(cascade.messages(wav))[0])
    assert "<|end_header_id|> what is the capital of Larlor? <|eot_id|>" in prompt
    first = speech_chat.first_token(cascade)(wav)
    assert first == next(iter(llm.stream_ids([{"role": "user", "content": asr.text}], 4)))
    assert cascade.last_transcript == asr.text and asr.calls == 3


def test_early_fusion_reads_the_codes_as_one_audio_turn(models):
    llm = speech_chat.ChatModel(models[1])
    early = speech_chat.EarlyFusion(lambda wav: np.array([5, 6, 512]), llm, 3)
    turn = early.messages(np.zeros(10))[0]["content"]
    assert T.string_to_codes(turn).tolist() == [5, 6, 512]
    prompt_ids = llm.prompt_ids(early.messages(np.zeros(10)))[0].tolist()
    vocab = llm.tokenizer.get_vocab()
    assert [vocab["<|sound_0005|>"], vocab["<|sound_0006|>"]] == [
        i for i in prompt_ids if i in (vocab["<|sound_0005|>"], vocab["<|sound_0006|>"])
    ]
    assert isinstance(speech_chat.first_token(early)(np.zeros(10)), int)


class FakeSystem:
    """Stands in for EarlyFusion/Cascade: each call sleeps; the very first call sleeps longer."""

    def __init__(self, name, seconds, first_seconds):
        self.name, self.seconds, self.first_seconds, self.calls = name, seconds, first_seconds, 0
        self.last_transcript = "heard"

    def stream_ids(self, wav):
        self.calls += 1
        time.sleep(self.first_seconds if self.calls == 1 else self.seconds)
        yield 7

    def reply(self, wav):
        return "ok"


def test_latency_drops_warmup_and_compares_both_systems_on_every_clip():
    early = FakeSystem("early", 0.002, first_seconds=0.3)
    cascade = FakeSystem("cascade", 0.02, first_seconds=0.3)
    clips = [("a", np.zeros(4)), ("b", np.zeros(4)), ("c", np.zeros(4))]
    out = R.latency(early, cascade, clips, warmup=1, repeats=2, examples=2)
    assert early.calls == cascade.calls == 1 + 3 * 2
    assert out["early_fusion"]["n"] == out["cascade"]["n"] == 6
    assert out["early_fusion"]["mean_ms"] < 100  # the slow first call was dropped
    assert 15 < out["cascade"]["mean_ms"] < 250
    assert out["ratio_vs_cascade"] == pytest.approx(
        out["early_fusion"]["mean_ms"] / out["cascade"]["mean_ms"]
    )
    assert out["ratio_vs_cascade"] < 0.5
    assert out["examples"][0] == {
        "text": "a",
        "early_fusion_reply": "ok",
        "asr_transcript": "heard",
        "cascade_reply": "ok",
    }


# -- demo --------------------------------------------------------------------------------------
def test_demo_panel_builds_without_blocking_and_streams_a_reply(models):
    llm = speech_chat.ChatModel(models[1])
    early = speech_chat.EarlyFusion(lambda wav: np.arange(30) % 513, llm, 4)
    panel = DemoPanel(early, Voice("en", "en-us"))
    result = panel.ask(np.zeros(16000, np.float32))
    assert len(result.codes) == 30 and 0 < result.ttft_s <= result.total_s
    assert "&lt;|sound_0000|&gt;" in panel.tokens.value and "30 tokens" in panel.tokens.value
    assert "first token after" in panel.timing.value
    panel._guarded(lambda: panel.ask_text("   "))
    assert "type some text" in panel.reply.value


def test_uploaded_audio_is_decoded_resampled_and_garbage_is_named():
    buf = io.BytesIO()
    t = np.arange(8000) / 8000
    soundfile.write(
        buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 8000, "PCM_16", format="WAV"
    )
    wav = wav_from_bytes(buf.getvalue(), "tone.wav")
    assert wav.dtype == np.float32 and abs(len(wav) - 16000) < 10
    with pytest.raises(AudioError, match="junk.wav"):
        wav_from_bytes(b"not audio at all", "junk.wav")


# -- the report and the results tables, read back from a manifest ------------------------------
def fake_report(profile="smoke"):
    speech = {
        "judge_score_mean": 4.25,
        "judge_parse_failures": 0,
        "judge_failures": 1,
        "judge_n": 4,
        "exact_match": 0.75,
    }
    refusal = {
        "precision": 0.9,
        "recall": 0.8,
        "f1": 0.847,
        "speech_false_refusal_rate": 0.1,
    }
    return {
        "profile": profile,
        "judge": "reference-match",
        "knowledge": {
            "benchmark": "tinyworld",
            "num_fewshot": 5,
            "headline": "cloze",
            "scores": {
                p: {"cloze": c, "letter": 0.25}
                for p, c in zip(R.PHASES, (0.83, 0.53, 0.61, 0.6), strict=True)
            },
        },
        "speech_instructions": {
            "judge": "reference-match",
            "phases": {"phase 2": {**speech, "judge_score_mean": 3.5}, "phase 3": speech},
        },
        "transcription": {
            "phases": {"phase 3": {"wer": 0.21, "by_language": {"en": 0.1, "fr": 0.32}}}
        },
        "refusal": {"items_per_kind": 4, "phases": {"phase 3": refusal, "phase 1": refusal}},
        "latency": {
            "clips": 3,
            "early_fusion": {"mean_ms": 12.5, "std_ms": 1.25},
            "cascade": {"mean_ms": 40.0, "std_ms": 2.0},
            "ratio_vs_cascade": 0.3125,
        },
    }


def test_flat_metrics_name_the_headline_numbers():
    m = R.flat_metrics(fake_report())
    assert m["judge_score_mean"] == 4.25 and m["judge_score_mean_phase2"] == 3.5
    assert m["judge_name"] == "reference-match"
    assert m["wer"] == 0.21 and m["wer_fr"] == 0.32
    assert m["mc_accuracy_phase2"] == 0.61 and m["mc_accuracy_letter_base"] == 0.25
    assert m["refusal_precision_phase3"] == 0.9
    assert m["ttft_ratio_vs_cascade"] == 0.3125 and m["ttft_cascade_ms"] == 40.0


def test_results_tables_are_read_from_the_manifest_with_paper_numbers_beside(tmp_path):
    run = start_run("07_evaluation", "smoke", tmp_path)
    run.add_record("report", fake_report())
    path = run.finish()
    tables = results.tables_from_manifest(path)
    k = tables["knowledge_table"]
    assert k.loc["phase 2", "cloze (tinyworld)"] == 0.61
    assert k.loc["phase 1", "paper (MMLU, letter)"] == 0.42
    assert "profile smoke" in k.index.name
    judged = tables["judge_table"]
    assert judged.loc["phase 3 (this run)", "judge"] == "reference-match"
    assert judged.loc["phase 3 (this run)", "mean rating (0-5)"] == "4.25"
    assert judged.loc["phase 3 (this run)", "judge failed"] == 1
    assert judged.loc["paper, phase 3 (OpenHermes-Audio)", "judge"] == "GPT-4 (AudioBench)"
    assert tables["wer_table"].loc["phase 3", "fr"] == 0.32
    lat = tables["latency_table"]
    assert lat.iloc[0]["early fusion (ms)"] == "12.50 ± 1.25"
    assert lat.iloc[1]["cascade (ms)"] == "453.18"
    assert tables["refusal_table"].loc["phase 3", "precision"] == "0.900"
    assert tables["wer_table"].loc["paper (v0.4, LibriSpeech en)", "fr"] == ""


def test_headline_values_for_the_prose_say_n_a_for_undefined_numbers(tmp_path):
    report = fake_report()
    report["refusal"]["phases"]["phase 3"] = {
        **report["refusal"]["phases"]["phase 3"],
        "precision": None,
    }
    run = start_run("07_evaluation", "smoke", tmp_path)
    run.add_record("report", report)
    run.log_metrics(**R.flat_metrics(report))
    values = results.headline_values(read_manifest(run.finish()))
    assert values["profile"] == "smoke" and values["judge_name"] == "reference-match"
    assert values["judge_score_mean"] == "4.25" and values["refusal_precision"] == "n/a"
    assert (values["judge_failures"], values["judge_unparsed"]) == (1, 0)
    assert values["mc_phase2"] == 0.61 and values["ttft_ratio"] == 0.3125
    assert values["paper_ttft_ratio"] == pytest.approx(111.52 / 453.18)


def test_a_manifest_without_a_report_is_named():
    run_dir = __import__("tempfile").mkdtemp()
    run = start_run("03_phase1_pretrain", "smoke", run_dir)
    path = run.finish()
    with pytest.raises(KeyError, match="records.report"):
        results.tables_from_manifest(path)


def test_knowledge_reuses_manifests_that_logged_both_formulations(tmp_path):
    from ichigo_lib.runs import Manifest

    manifests = {
        phase: Manifest(
            tmp_path / f"{i}.json",
            {"metrics": {"mc_accuracy_cloze": 0.8 - 0.1 * i, "mc_accuracy_letter": 0.25}},
        )
        for i, phase in enumerate(R.PHASES)
    }
    inputs = R.EvalInputs(
        models={p: tmp_path / "missing" for p in R.PHASES},
        world=tmp_path / "no-world",
        quantizer=tmp_path,
        speech_qa=tmp_path,
        transcription=tmp_path,
        inaudible=tmp_path,
        manifests=manifests,
    )
    out = R.knowledge(inputs, load_config("smoke"), tmp_path / "tasks")
    assert out["scores"]["phase 2"] == {"cloze": pytest.approx(0.6), "letter": 0.25}
    assert out["source"]["phase 3"] == "05_phase3_refusal" and out["headline"] == "cloze"
    assert not (tmp_path / "tasks").exists()  # nothing was scored again
