"""The paper's benchmarks in ``full``, offline: AudioBench's judge prompt and parse rule, its
LibriSpeech normalisation, benchmark datasets in the hub's schema written here as parquet (real
espeak-ng audio at 22.05 and 24 kHz, so resampling runs), the benchmark stage end to end on a
random tiny Llama and an untrained tiny WhisperVQ with a loopback judge, and lm-eval's own MMLU
groups (letters and cloze) read from a local copy of ``cais/mmlu``."""

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import soxr
from fixtures_hub import wav_bytes, write_audio_parquet, write_mmlu_copy
from http_stub import Reply, chat, serve
from test_evaluation import fake_report

from ichigo_lib.checkpoints import write_llama_init, write_sound_init
from ichigo_lib.config import ConfigError, JudgeConfig, LlamaArch, MCConfig, TinyVQArch, load_config
from ichigo_lib.data.prompts import TRANSCRIPTION_PROMPTS
from ichigo_lib.evaluate import benchmarks as B
from ichigo_lib.evaluate import judge as J
from ichigo_lib.evaluate import mc, results
from ichigo_lib.evaluate import report as R
from ichigo_lib.evaluate.wer import audiobench_normalise, audiobench_wer
from ichigo_lib.speech import train_vq, whispervq
from ichigo_lib.speech.audio import SAMPLE_RATE
from ichigo_lib.speech.corpus import heldout_voices
from ichigo_lib.speech.tts import espeak_raw
from ichigo_lib.wordtok import build_word_tokenizer

ARCH = LlamaArch(
    num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=512
)
WORDS = ["what", "is", "the", "capital", "of", "Larlor", "?", "Vazelro", "green"]
INSTRUCTIONS = ["Name a green fruit.", "Say hello to Larlor.", "What is the capital of Vazelro?"]


# -- AudioBench's judge: its prompt and its parse rule -----------------------------------------
@pytest.mark.parametrize(
    "reply, rating",
    [
        ("Explanation: The reference answer is X, while the model's answer is X.\nRating: 4", 4),
        ("Rating: 5.", 5),
        ("Rating: 3.5", 3.5),
        ("Explanation: close, so I think it deserves a 2", 2),  # upstream reads any last number
        ("Explanation: the model's answer ignores the question entirely.", None),  # prose
        ("Rating: **4**", None),
        ("Rating: 4/5", None),
        ("Rating: 7", None),
        ("Rating: nan", None),
        ("", None),  # nothing
        ("  \n ", None),
    ],
)
def test_audiobench_parse_rule_reads_the_last_token(reply, rating):
    assert J.parse_audiobench_rating(reply) == rating


def test_audiobench_prompt_puts_reference_answer_then_question():
    [message] = J.judge_messages("What is 2+2?", "five", "four", J.AUDIOBENCH)
    text = message["content"]
    assert text.startswith("[Reference Answer]\nfour\n\n[Model Answer]\nfive\n\n[Question]\n")
    assert "Score0: The answer is completely misaligned" in text
    assert text.endswith("Rating: (int)") and J.RUBRICS["audiobench"] is J.AUDIOBENCH


def test_audiobench_rubric_asks_once_and_scores_unparsed_and_failed_replies_zero():
    def script(i, req):
        content = req["messages"][0]["content"]
        if "[Question]\nq1" in content:
            return Reply(body=chat("Explanation: fine.\nRating: 4"))
        if "[Question]\nq2" in content:
            return Reply(body=chat("Explanation: I cannot decide."))
        return Reply(500, {"error": "down"})

    with serve(script) as stub:
        cfg = JudgeConfig(
            kind="endpoint", url=stub.url, model="judge-x", max_retries=1, backoff_s=0.01
        )
        judge = R.make_judge(cfg, None).with_rubric(J.AUDIOBENCH)
        out = judge.score(["q1", "q2", "q3"], ["a"] * 3, ["r"] * 3)
    assert judge.name == "llm:judge-x (audiobench rubric)"
    assert [r.score for r in out] == [4, 0, 0] and out[2].failure == "HTTP 500"
    summary = J.summarise(out)
    assert (summary["judge_parse_failures"], summary["judge_failures"]) == (1, 1)
    assert summary["judge_score_mean"] == pytest.approx(4 / 3)
    assert len(stub.requests) == 1 + 1 + 2  # the unparsed reply is not asked again; 500 is


# -- AudioBench's LibriSpeech normalisation ----------------------------------------------------
@pytest.mark.parametrize(
    "text, normalised",
    [
        ("CHAPTER TWENTY ONE", "chapter 21"),
        ("chapter 21.", "chapter 21"),
        ("HE HAD 5 APPLES", "he had five apples"),
        ("I DON'T KNOW, MISTER SMITH", "i do not know mister smith"),
        ("i do not know mr. smith", "i do not know mister smith"),
        ("WELL [LAUGHTER] UH THAT'S (APPLAUSE) ALL", "well that is all"),
        ("[noise]", ""),
    ],
)
def test_audiobench_normalisation_of_librispeech_text(text, normalised):
    assert audiobench_normalise(text) == normalised


def test_audiobench_wer_is_corpus_level_and_counts_empty_sides():
    refs = ["THE CAT SAT DOWN", "ON MATS"]
    hyps = ["the cat sat down", "on"]
    assert audiobench_wer(refs, hyps) == pytest.approx(1 / 6)  # not the mean of 0 and 1/2
    assert audiobench_wer(["[noise]"], ["hello"]) == 1.0  # "empty" vs "hello"


# -- benchmark datasets in the hub's schema -----------------------------------------------------
@pytest.fixture(scope="module")
def speech():
    """espeak-ng's own 22.05 kHz output for each instruction."""
    voice = heldout_voices("en")[0]
    return [espeak_raw(text, voice) for text in INSTRUCTIONS]


@pytest.fixture(scope="module")
def sets(tmp_path_factory, speech):
    """AudioBench-shaped sets (encoded audio at 22.05 kHz) and a LibriSpeech-shaped one
    (decoded arrays at 24 kHz)."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    audio = [
        {"bytes": wav_bytes(s, rate), "path": f"{i}.wav"} for i, (s, rate) in enumerate(speech)
    ]
    answers = ["A green apple.", "Hello, Larlor!", "Vazelro."]
    out = {}
    for name in ("openhermes", "alpaca"):
        columns = {"context": audio, "speech_instruction": INSTRUCTIONS, "answer": answers}
        answers = [f"{a} Indeed." for a in answers]  # the judge sees other references
        write_audio_parquet(tmp / name / "data" / "test-00000-of-00001.parquet", columns, True)
        out[name] = tmp / name  # a directory, as a snapshot of the hub repository
    arrays = [
        {"array": soxr.resample(s, rate, 24_000).tolist(), "sampling_rate": 24_000}
        for s, rate in speech
    ]
    columns = {"context": arrays, "answer": [t.upper() for t in INSTRUCTIONS]}
    out["librispeech"] = write_audio_parquet(tmp / "librispeech.parquet", columns, False)
    return out


def test_loading_decodes_and_resamples_both_audio_shapes(sets, speech, tmp_path):
    hermes = B.load_spoken_set("OpenHermes-Audio", str(sets["openhermes"]), "test", 2, True)
    assert hermes.instructions == INSTRUCTIONS[:2] and hermes.references[1] == "Hello, Larlor!"
    libri = B.load_spoken_set(B.LIBRISPEECH, str(sets["librispeech"]), "test", None)
    assert libri.instructions is None and len(libri.clips) == 3
    datasets.Dataset.from_parquet(str(sets["librispeech"])).save_to_disk(tmp_path / "saved")
    saved = B.load_spoken_set(B.LIBRISPEECH, str(tmp_path / "saved"), "test", None)
    assert saved.references == libri.references
    for spoken in (hermes, libri, saved):
        for clip, (samples, rate) in zip(spoken.clips, speech, strict=False):
            assert clip.dtype == np.float32
            assert abs(len(clip) - len(samples) * SAMPLE_RATE / rate) < 10


@pytest.mark.parametrize(
    "columns, match",
    [
        (
            {
                "context": [{"array": [0.1] * 800, "sampling_rate": 16000}],
                "speech_instruction": ["q"],
            },
            r"Alpaca-Audio \(.*\): no column \['answer'\]",
        ),
        (
            {
                "context": [
                    {"array": [0.1] * 800, "sampling_rate": 16000},
                    {"array": [0.1] * 800, "sampling_rate": None},
                ],
                "speech_instruction": ["q", "q"],
                "answer": ["a", "a"],
            },
            r"Alpaca-Audio \(.*\) row 1 column 'context': audio 'array' without a 'sampling_rate'",
        ),
        (
            {
                "context": [{"array": [0.1] * 800, "sampling_rate": 16000}],
                "speech_instruction": ["q"],
                "answer": [""],
            },
            r"row 0 column 'answer': expected non-empty text",
        ),
        (
            {
                "context": [{"array": [0.0] * 800, "sampling_rate": 16000}],
                "speech_instruction": ["q"],
                "answer": ["a"],
            },
            r"row 0 column 'context': audio is silent",
        ),
    ],
)
def test_schema_errors_name_dataset_row_and_column(tmp_path, columns, match):
    path = write_audio_parquet(tmp_path / "bad.parquet", columns, encoded=False)
    with pytest.raises(ValueError, match=match):
        B.load_spoken_set("Alpaca-Audio", str(path), "test", None, instructions=True)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"eval.benchmarks": {"split": "test"}}, "names no set"),
        ({"eval.benchmarks.librispeech": "x", "eval.benchmarks.asr_prompt": 8}, "asr_prompt"),
        ({"eval.benchmarks.librispeech": "x", "eval.benchmarks.limit": 0}, "limit"),
        ({"eval.benchmarks.librispeech": "x", "eval.benchmarks.rubric": "gpt4"}, "audiobench"),
        ({"eval.benchmarks.libri": "x"}, "did you mean 'eval.benchmarks.librispeech'"),
        ({"eval.mc.dataset": "cais/mmlu"}, "tinyworld's items come from the world"),
    ],
)
def test_benchmarks_config_is_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", override)


def test_full_names_the_papers_sets_and_the_toy_profiles_none():
    b = load_config("full").eval.benchmarks
    assert (b.openhermes, b.alpaca, b.librispeech) == (
        "AudioLLMs/openhermes_instruction_test",
        "AudioLLMs/alpaca_audio_test",
        "AudioLLMs/librispeech_test_clean_v2",
    )
    assert b.split == "test" and b.rubric == "audiobench"
    assert load_config("tiny").eval.benchmarks is None is load_config("smoke").eval.benchmarks


# -- the benchmark stage end to end --------------------------------------------------------------
@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    """A random tiny text Llama, its +515-token copy, and an untrained tiny WhisperVQ file."""
    tmp = tmp_path_factory.mktemp("systems")
    base = write_llama_init(ARCH, build_word_tokenizer(WORDS), tmp / "base", seed=4)
    write_sound_init(base, tmp / "sound")
    arch = TinyVQArch(n_state=32, n_head=2, encoder_layers=1, decoder_layers=0, codebook_dim=8)
    vq = train_vq.build_tiny_whispervq(arch, whispervq.CharCodec("abcdefghijklmnopqrstuvwxyz "))
    return base, tmp / "sound", vq.save(tmp / "vq.model")


def _inputs(systems, tmp_path) -> R.EvalInputs:
    base, sound, quantizer = systems
    return R.EvalInputs(
        models={p: base if p == "base" else sound for p in R.PHASES},
        world=tmp_path,
        quantizer=quantizer,
        speech_qa=tmp_path,
        transcription=tmp_path,
        inaudible=tmp_path,
        manifests={},
    )


def test_benchmark_stage_end_to_end_with_a_loopback_judge(systems, sets, tmp_path):
    overrides = {
        "eval.benchmarks": {key: str(path) for key, path in sets.items()} | {"asr_prompt": 3},
        "eval.benchmarks.max_new_tokens": 4,
        "eval.latency.clips": 2,
    }
    cfg = load_config("smoke", overrides)
    ratings = iter(["Explanation: ok.\nRating: 3", "Rating: **5**"])  # the 2nd does not parse

    def script(i, req):
        return Reply(body=chat(next(ratings, "Explanation: wrong.\nRating: 1")))

    with serve(script) as stub:
        judge_cfg = JudgeConfig(kind="endpoint", url=stub.url, model="judge-x", concurrency=1)
        judge = R.make_judge(judge_cfg, tmp_path / "cache")
        out = R.benchmarks(_inputs(systems, tmp_path), cfg, judge)
    assert out["judge"] == "llm:judge-x (audiobench rubric)" and out["rubric"] == "audiobench"
    prompts = [r["messages"][0]["content"] for r in stub.requests]
    assert len(prompts) == 6 and all(p.startswith("[Reference Answer]\n") for p in prompts)
    assert "[Question]\nName a green fruit.\n" in prompts[0]
    hermes = out["audiobench"]["openhermes"]
    assert (hermes["judge_n"], hermes["judge_parse_failures"], hermes["judge_failures"]) == (
        3,
        1,
        0,
    )
    assert hermes["judge_score_mean"] == pytest.approx((3 + 0 + 1) / 3)
    assert hermes["failed_items"][0]["item"] == 1 and hermes["name"] == "OpenHermes-Audio"
    assert out["audiobench"]["alpaca"]["judge_score_mean"] == 1.0
    libri = out["librispeech"]
    assert libri["items"] == 3 and libri["prompt"] == TRANSCRIPTION_PROMPTS[3]
    assert 0 <= libri["wer"] and libri["samples"][0]["reference"] == INSTRUCTIONS[0].upper()
    assert out["latency"]["clips"] == 2 and out["latency"]["examples"][0]["text"] == INSTRUCTIONS[0]

    report = {"profile": "smoke", "benchmarks": out}
    metrics = R.flat_metrics(fake_report() | report)
    assert metrics["audiobench_openhermes_judge_parse_failures"] == 1
    assert metrics["audiobench_alpaca_judge_failures"] == 0
    assert metrics["librispeech_wer"] == libri["wer"] and "benchmark_ttft_cascade_ms" in metrics
    table = results.benchmarks_table(report)
    assert table.loc["OpenHermes-Audio (paper, phase 3)", "value"] == "3.64"
    assert table.loc["OpenHermes-Audio (this run)", "judge"] == out["judge"]
    assert table.loc["OpenHermes-Audio (this run)", "unparsed"] == 1
    assert table.loc["LibriSpeech test-clean (paper, v0.4)", "value"] == "0.220"


def test_results_page_says_when_no_benchmark_ran():
    table = results.tables(fake_report())["benchmarks_table"]
    assert table.loc["not run", "value"] == "profile smoke sets no eval.benchmarks"
    assert not any(
        k.startswith(("audiobench", "librispeech")) for k in R.flat_metrics(fake_report())
    )


def test_evaluate_all_runs_the_benchmark_stage_only_when_configured(monkeypatch, tmp_path):
    for stage in ("knowledge", "speech_instructions", "transcription", "refusal", "latency"):
        monkeypatch.setattr(R, stage, lambda *a, _s=stage, **k: _s)
    monkeypatch.setattr(R, "load_rows", lambda *a, **k: [])
    monkeypatch.setattr(R, "latency_clips", lambda *a, **k: [])
    monkeypatch.setattr(R, "latency_systems", lambda *a, **k: (None, None, None))
    monkeypatch.setattr(R, "benchmarks", lambda inputs, cfg, judge: f"ran with {judge.name}")
    judge, inputs = J.ReferenceMatchJudge(), SimpleNamespace(speech_qa=tmp_path)
    off = R.evaluate_all(inputs, load_config("smoke"), judge, tmp_path)
    assert "benchmarks" not in off and "benchmarks" not in off["timings"]
    cfg = load_config("smoke", {"eval.benchmarks.librispeech": "somewhere"})
    on = R.evaluate_all(inputs, cfg, judge, tmp_path)
    assert on["benchmarks"] == "ran with reference-match" and "benchmarks" in on["timings"]


# -- MMLU: lm-eval's own groups on a local copy of cais/mmlu -----------------------------------
def test_mmlu_letters_and_cloze_run_lm_evals_own_groups_on_a_local_copy(systems, tmp_path):
    data = write_mmlu_copy(tmp_path / "mmlu")
    cfg = MCConfig(
        benchmark="mmlu",
        headline="letter",
        batch_size=64,
        device="cpu",
        dtype="float32",
        dataset=str(data),
    )
    task_dir = mc.prepare_tasks(cfg, None, tmp_path / "tasks")
    spec = json.loads((task_dir / "mmlu_on_dataset.yaml").read_text())
    [entry] = spec["task"]
    assert entry["group"] == "mmlu" and entry["dataset_path"] == str(data.resolve())
    # cached by the copy's files, under the task directory (HF datasets would key it by name)
    cache = Path(entry["dataset_kwargs"]["cache_dir"])
    assert cache.parent == task_dir / "datasets_cache"
    (data / "abstract_algebra" / "test-00000.parquet").touch()
    again = json.loads((mc.prepare_tasks(cfg, None, task_dir) / "mmlu_on_dataset.yaml").read_text())
    assert again["task"][0]["dataset_kwargs"]["cache_dir"] != str(cache)
    result = mc.evaluate_mc(systems[0], cfg, task_dir)
    assert result.num_items == 57 * 2  # every subject's test rows, ours and not the hub's
    assert 0 <= result.letter <= 1 and 0 <= result.cloze <= 1
    assert result.metrics("letter")["mc_accuracy"] == result.letter
