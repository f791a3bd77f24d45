"""Audio front end, espeak-ng TTS, the tiny WhisperVQ (encode, save/load, train) and metrics."""

import random

import numpy as np
import pytest
import soundfile
import torch

from ichigo_lib.config import (
    ConfigError,
    SpeechCorpusConfig,
    TinyVQArch,
    VQTrainConfig,
    load_config,
)
from ichigo_lib.speech import audio, corpus, metrics, train_vq, tts, whispervq
from ichigo_lib.world import WorldConfig, build_world

SR = 16_000
ARCH = TinyVQArch(n_state=32, n_head=2, encoder_layers=1, codebook_dim=8)


def _tone(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = np.sin(2 * np.pi * (150 + 60 * np.sin(3 * t + seed)) * t) * (0.5 + 0.5 * np.sin(5 * t))
    return (0.3 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_vq():
    return train_vq.build_tiny_whispervq(ARCH, whispervq.CharCodec("abc .'"), seed=0).eval()


# -- audio front end ------------------------------------------------------------------------


def test_wav_flac_mp3_and_ogg_load_as_mono_16k(tmp_path):
    stereo = np.stack([_tone(1.0, 44_100), _tone(1.0, 44_100, seed=1)], axis=1)
    for suffix in audio.SUPPORTED_SUFFIXES:
        path = tmp_path / f"x{suffix}"
        soundfile.write(path, stereo, 44_100)
        x = audio.load_audio(path)
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) - SR) <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"RIFF not really a wav file"), "cannot decode"),
        (lambda p: soundfile.write(p, np.zeros((0, 1)), SR), "empty|cannot decode"),
        (lambda p: soundfile.write(p, np.zeros(SR, dtype=np.float32), SR), "silent"),
        (lambda p: soundfile.write(p, np.full(100, 0.1, dtype=np.float32), SR), "shorter"),
    ],
)
def test_bad_audio_files_are_refused_by_name(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(audio.AudioError, match=message) as err:
        audio.load_audio(path)
    assert "bad.wav" in str(err.value)


def test_unsupported_format_and_missing_file_are_named(tmp_path):
    with pytest.raises(audio.AudioError, match=r"x\.aac.*unsupported"):
        audio.load_audio(tmp_path / "x.aac")
    with pytest.raises(audio.AudioError, match="no such file"):
        audio.load_audio(tmp_path / "missing.wav")
    with pytest.raises(audio.AudioError, match="NaN"):
        audio.prepare_audio(np.full(SR, np.nan), SR, "clip 3")


def test_log_mel_matches_openai_whisper():
    import whisper

    x = _tone(2.3)
    expected = whisper.log_mel_spectrogram(torch.from_numpy(x))
    got = audio.log_mel(x)
    assert got.shape == (80, len(x) // 160)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_windows_cover_the_clip_and_keep_the_token_count():
    x = np.zeros(65 * SR + 1000, dtype=np.float32)
    pieces = audio.windows(x)
    assert [len(p) for p in pieces] == [30 * SR, 30 * SR, 5 * SR + 1000]
    assert sum(len(p) // 640 for p in pieces) == len(x) // 640


# -- the quantizer --------------------------------------------------------------------------


def test_batched_encoding_equals_one_by_one_and_runs_at_25_tokens_per_second(tiny_vq):
    clips = [_tone(s, seed=i) for i, s in enumerate((0.7, 2.5, 1.3, 4.1))]
    batched = tiny_vq.encode(clips, batch_size=4)
    for clip, codes in zip(clips, batched, strict=True):
        np.testing.assert_array_equal(tiny_vq.encode([clip])[0], codes)
        assert len(codes) == len(clip) // 640
    assert metrics.tokens_per_second(batched, clips) == pytest.approx(25, abs=0.5)


def test_audio_over_30s_is_encoded_whole(tiny_vq):
    clip = _tone(47.0)
    codes = tiny_vq.encode([clip])[0]
    assert len(codes) == len(clip) // 640
    head = tiny_vq.encode([clip[: 30 * SR]])[0]
    np.testing.assert_array_equal(codes[:750], head)


def test_save_and_load_round_trip(tiny_vq, tmp_path):
    path = tiny_vq.save(tmp_path / "tiny.model")
    loaded = whispervq.load_whispervq(path)
    clips = [_tone(1.5), _tone(3.0, seed=2)]
    a, b = tiny_vq.encode(clips), loaded.encode(clips)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert loaded.transcribe(b, ["en", "en"]) == tiny_vq.transcribe(a, ["en", "en"])
    assert loaded.window == "clip"


def test_bad_quantizer_files_are_refused(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(whispervq.CheckpointFormatError, match="junk.model"):
        whispervq.load_whispervq(junk)
    torch.save({"config": {"vq_codes": 512}, "state_dict": {}}, tmp_path / "partial.model")
    with pytest.raises(whispervq.CheckpointFormatError, match="lacks"):
        whispervq.load_whispervq(tmp_path / "partial.model")
    with pytest.raises(whispervq.CheckpointFormatError, match="no such quantizer"):
        whispervq.load_whispervq(tmp_path / "missing.model")
    with pytest.raises(whispervq.CheckpointFormatError, match="neither"):
        whispervq.whisper_checkpoint("no-such-whisper")


def test_ctc_codec_round_trip():
    codec = whispervq.CharCodec.from_texts(["hello world"])
    ids = codec.encode("hello")
    assert codec.decode_ctc([0, ids[0], ids[0], 0, ids[1], ids[2], 0, ids[3], ids[4]]) == "hello"
    with pytest.raises(ValueError, match="alphabet"):
        codec.encode("héllo")


def test_decoder_vocab_sequences_and_decoding():
    vocab = whispervq.DecoderVocab(whispervq.CharCodec("ab "), ("en", "de"))
    seq = vocab.sequence("ab a", "de")
    assert seq[:2] == [vocab.sot, vocab.lang("de")] and seq[-1] == vocab.eot
    assert len({vocab.sot, vocab.eot, vocab.lang("en"), vocab.lang("de")}) == 4
    assert max(seq) < vocab.n_vocab and vocab.decode(seq[2:] + [1, 2]) == "ab a"
    with pytest.raises(ValueError, match="'fr'"):
        vocab.lang("fr")


def test_ctc_only_format_1_file_still_loads_and_transcribes(tmp_path):
    arch = TinyVQArch(n_state=32, n_head=2, encoder_layers=1, codebook_dim=8, decoder_layers=0)
    model = train_vq.build_tiny_whispervq(arch, whispervq.CharCodec("ab"), seed=0).eval()
    path = model.save(tmp_path / "ctc.model")
    assert torch.load(path, weights_only=True)["ichigo"]["format_version"] == 1
    loaded = whispervq.load_whispervq(path)
    assert loaded.decoder is None
    codes = loaded.encode([_tone(1.0)])
    assert loaded.transcribe(codes, ["en"]) == model.transcribe(codes, ["en"])


def test_greedy_decoding_stops_at_end_of_text_and_batches_like_one_by_one(tiny_vq):
    codes = tiny_vq.encode([_tone(0.5), _tone(1.2, seed=3), _tone(0.3, seed=4)])
    langs = ["en", "de", "fr"]
    for weight in (0.0, 0.5):
        together = tiny_vq.transcribe(codes, langs, batch_size=3, ctc_weight=weight)
        alone = [
            tiny_vq.transcribe([c], [g], ctc_weight=weight)[0]
            for c, g in zip(codes, langs, strict=True)
        ]
        assert together == alone
    assert all(len(t) <= 2 * len(c) for t, c in zip(together, codes, strict=True))


def test_decoder_learns_to_transcribe_a_tiny_corpus():
    """The whole objective trains: after a few hundred steps on 2 short sentences the greedy
    decoder reads them back from the codes alone."""
    texts = ["the cat", "a red dog"]
    voice = tts.Voice("en", tts.ESPEAK_VOICES["en"][0], "m3", 160)
    clips = tts.synthesize_many(texts, [voice, voice], num_workers=1)
    utts = [train_vq.Utterance(t, "en", "v", c) for t, c in zip(texts, clips, strict=True)]
    model = train_vq.build_tiny_whispervq(ARCH, whispervq.CharCodec.from_texts(texts))
    cfg = VQTrainConfig(
        num_steps=150, batch_seconds=4.0, lr=3e-3, warmup_steps=5, quantizer_start_step=60
    )
    history = train_vq.train_tiny_whispervq(model, utts, cfg, progress=False)
    assert history[-1]["decoder_ce"] < 0.5 * history[0]["decoder_ce"]
    assert model.transcribe(model.encode(clips), ["en", "en"]) == texts


def test_training_runs_switches_on_the_quantizer_and_uses_the_codebook():
    rng = random.Random(0)
    texts = ["the cat", "a dog", "the red fox", "my friend"] * 3
    voices = [tts.random_voice("en", rng) for _ in texts]
    clips = tts.synthesize_many(texts, voices, num_workers=2)
    utts = [
        train_vq.Utterance(t, "en", str(v), c) for t, v, c in zip(texts, voices, clips, strict=True)
    ]
    model = train_vq.build_tiny_whispervq(ARCH, whispervq.CharCodec.from_texts(texts))
    cfg = VQTrainConfig(num_steps=6, batch_seconds=8.0, warmup_steps=1, quantizer_start_step=3)
    history = train_vq.train_tiny_whispervq(model, utts, cfg, progress=False)
    assert len(history) == 6 and all(np.isfinite(h["loss"]) for h in history)
    assert history[2]["codes_active"] == 0 and history[3]["codes_active"] > 0
    assert bool(model.bottleneck.vq._codebook.initted)
    codes = model.encode(clips[:4])
    assert all(c.max() < 512 for c in codes)


def test_overlong_training_clip_is_refused():
    model = train_vq.build_tiny_whispervq(ARCH, whispervq.CharCodec("ab"))
    long = train_vq.Utterance("ab", "en", "v", np.zeros(31 * SR, dtype=np.float32))
    with pytest.raises(ValueError, match="exceed 30 s"):
        train_vq.train_tiny_whispervq(model, [long], VQTrainConfig(num_steps=1), progress=False)


# -- text to speech and corpus --------------------------------------------------------------


def test_espeak_speaks_every_language_at_16k():
    for lang in tts.ESPEAK_VOICES:
        x = tts.synthesize("Nolnor 3", tts.random_voice(lang, random.Random(1)))
        assert x.dtype == np.float32 and 0.3 * SR < len(x) < 5 * SR
    with pytest.raises(tts.TTSError, match="empty text"):
        tts.synthesize("  ", tts.Voice("en", "en-us"))
    with pytest.raises(KeyError, match="no espeak-ng voice"):
        tts.random_voice("xx", random.Random(0))


def test_heldout_speech_shares_no_sentence_with_training():
    world = build_world(WorldConfig(num_countries=24, sentences_per_language=40))
    train, heldout = corpus.tokenizer_texts(world, SpeechCorpusConfig(heldout_per_language=5))
    assert len(heldout) == 5 * 8
    assert not {t.text for t in train} & {t.text for t in heldout}
    assert any(t.lang == "en" and t.text.endswith("?") for t in train)


# -- metrics and config ---------------------------------------------------------------------


def test_token_metrics():
    assert metrics.edit_distance([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert metrics.edit_distance([1, 2, 3, 4], [1, 9, 3]) == pytest.approx(0.5)
    codes = [np.arange(256), np.arange(256, 512)]
    assert metrics.codebook_usage(codes) == 1.0
    assert metrics.codebook_usage([np.array([0, 0, 512])]) == 1 / 512
    assert metrics.code_perplexity([np.arange(512)]) == pytest.approx(512)
    assert (
        metrics.random_pair_distance(
            [np.array([1, 2]), np.array([3, 4])], codes[:0] + [np.array([1, 2]), np.array([3, 4])]
        )
        == 1.0
    )


def test_speech_config_is_validated():
    with pytest.raises(ConfigError, match="needs speech.quantizer"):
        load_config("tiny", {"speech": {"source": "pretrained"}})
    with pytest.raises(ConfigError, match="speech.train.num_step"):
        load_config("tiny", {"speech.train.num_step": 3})
    assert load_config("full").speech.quantizer.endswith("whisper-vq-stoks-v3-7lang.model")


def test_ctc_prefix_scores_match_ctc_loss_and_ignore_padding():
    """Scoring a string character by character, then its end, gives exactly CTC's
    log-likelihood of that string (torch's ctc_loss), for rows of different lengths."""
    from ichigo_lib.speech.ctc_prefix import CTCPrefixScorer

    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(2, 12, 4), -1)
    frames = torch.tensor([12, 7])
    targets = [[1, 1, 2], [3, 2]]
    scorer = CTCPrefixScorer(logp, frames)
    prefix = []
    for step in range(3):
        chars = torch.tensor([[1, 2, 3], [3, 2, 1]])
        psi, state = scorer.extend_scores(chars)
        pick = []
        for row, target in enumerate(targets):
            pick.append(chars[row].tolist().index(target[step]) if step < len(target) else -1)
        scorer.advance(chars, psi, state, torch.tensor(pick))
        prefix.append(pick)
    expected = -torch.nn.functional.ctc_loss(
        logp.transpose(0, 1),
        torch.tensor([1, 1, 2, 3, 2]),
        frames,
        torch.tensor([3, 2]),
        reduction="none",
    )
    torch.testing.assert_close(scorer.end_score(), expected)
    # a prefix is at least as likely as any complete string that starts with it
    assert bool((scorer.score >= scorer.end_score() - 1e-5).all())
