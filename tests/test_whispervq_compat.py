"""Our WhisperVQ loads WhisperSpeech's files and gives the same codes and transcripts.

The reference is WhisperSpeech's own ``RQBottleneckTransformer`` (0.8.9, requirements-whisper.txt)
with a tiny random openai-whisper model as its Whisper: the same classes and file formats as the
published ``whisper-vq-stoks-*.model`` checkpoints, small enough for CPU and no download.
"""

from unittest import mock

import numpy as np
import pytest
import torch
from fixtures_hub import write_whisperspeech_quantizer

from ichigo_lib.speech import audio as A
from ichigo_lib.speech import whispervq

SR = 16_000


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(WhisperSpeech model with its Whisper, quantizer file, Whisper checkpoint file)."""
    return write_whisperspeech_quantizer(tmp_path_factory.mktemp("whisperspeech"))


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A gliding harmonic tone with noise: varied enough to use many codes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 80 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def assert_same_codes_up_to_ties(ours, clip, got, expected, tol=5e-3):
    """``got`` equals ``expected`` except where two codes tie: there both are within ``tol`` of
    the best cosine similarity. Our log-mel matches whisper's to ~1e-5, not bit for bit, and a
    random model puts some frames almost equally close to two codes, so which one wins depends
    on the CPU's rounding."""
    assert len(got) == len(expected)
    differ = np.flatnonzero(got != expected)
    assert len(differ) <= 0.03 * len(got), f"{len(differ)} of {len(got)} codes differ"
    if len(differ):
        mels = [A.log_mel(w) for w in A.windows(A.prepare_audio(clip, SR))]
        codebook = ours.bottleneck.vq._codebook.embed[0]
        sims = torch.cat([x @ codebook.T for x in ours.latents_mels(mels)]).numpy()
        best = sims[differ].max(-1)
        assert np.all(best - sims[differ, got[differ]] < tol)
        assert np.all(best - sims[differ, expected[differ]] < tol), differ


def test_same_codes_as_whisperspeech_on_the_same_audio(reference):
    vq, qpath, wpath = reference
    ours = whispervq.load_whispervq(qpath, whisper=wpath)
    for seed, seconds in enumerate((1.0, 3.3, 7.9)):
        clip = _speechlike(seconds, seed)
        with torch.no_grad():
            expected = vq.encode_audio(torch.from_numpy(clip)[None])[0].numpy()
        got = ours.encode([clip])[0]
        assert len(got) == int(seconds * SR) // 640
        assert_same_codes_up_to_ties(ours, clip, got, expected)
    assert len(np.unique(expected)) > 5  # the comparison is not between constant sequences


def test_long_audio_is_encoded_whole_where_whisperspeech_truncates_at_30s(reference):
    vq, qpath, wpath = reference
    ours = whispervq.load_whispervq(qpath, whisper=wpath)
    clip = _speechlike(41.0, 7)
    with torch.no_grad():
        upstream = vq.encode_audio(torch.from_numpy(clip)[None])[0].numpy()
    got = ours.encode([clip])[0]
    assert len(upstream) == 750  # 30 s: the rest is silently dropped upstream
    assert len(got) == 41 * 25
    with torch.no_grad():  # ours = upstream on each 30 s window, concatenated
        head = vq.encode_audio(torch.from_numpy(clip[: 30 * SR])[None])[0].numpy()
        tail = vq.encode_audio(torch.from_numpy(clip[30 * SR :])[None])[0].numpy()
    assert_same_codes_up_to_ties(ours, clip, got, np.concatenate([head, tail]))


def test_bottleneck_transcripts_match_whisperspeech_decode_text(reference):
    vq, qpath, wpath = reference
    ours = whispervq.load_whispervq(qpath, whisper=wpath)
    codes = ours.encode([_speechlike(2.0, 3)])[0]
    with torch.no_grad():
        expected = vq.decode_text(torch.from_numpy(codes))[0].text
    with mock.patch("whisper.DecodingOptions", lambda **kw: vq.decoding_options):
        assert ours.transcribe([codes], ["en"]) == [expected]


def test_older_out_blocks_key_names_load(reference, tmp_path):
    _, qpath, wpath = reference
    spec = torch.load(qpath, weights_only=True)
    spec["state_dict"] = {k.lstrip("_"): v for k, v in spec["state_dict"].items()}
    old = tmp_path / "old.model"
    torch.save(spec, old)
    a = whispervq.load_whispervq(qpath, whisper=wpath).encode([_speechlike(2.0, 1)])[0]
    b = whispervq.load_whispervq(old, whisper=wpath).encode([_speechlike(2.0, 1)])[0]
    np.testing.assert_array_equal(a, b)


def test_wrong_whisper_for_the_quantizer_is_refused(reference, tmp_path):
    _, qpath, wpath = reference
    ckpt = torch.load(wpath, weights_only=True)
    ckpt["dims"]["n_audio_state"] = 32
    ckpt["model_state_dict"] = {}
    bad = tmp_path / "other-whisper.pt"
    torch.save(ckpt, bad)
    with pytest.raises(whispervq.CheckpointFormatError, match="does not match the Whisper"):
        whispervq.load_whispervq(qpath, whisper=bad)


def test_the_tiny_quantizer_file_loads_in_whisperspeech(reference, tmp_path):
    from whisperspeech import vq_stoks

    from ichigo_lib.config import TinyVQArch
    from ichigo_lib.speech import train_vq

    arch = TinyVQArch(n_state=32, n_head=2, encoder_layers=1, codebook_dim=8)
    path = train_vq.build_tiny_whispervq(arch, whispervq.CharCodec("ab")).save(tmp_path / "t.model")
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
        theirs = vq_stoks.RQBottleneckTransformer.load_model(local_filename=str(path))
    ours = whispervq.load_whispervq(path)
    for key, value in ours.bottleneck.state_dict().items():
        torch.testing.assert_close(theirs.state_dict()[key], value)
    assert ours.codebook.shape == (ours.vq_codes, arch.codebook_dim)
    embed = next(v for k, v in theirs.state_dict().items() if k.endswith("_codebook.embed"))
    torch.testing.assert_close(ours.codebook, embed[0, : ours.vq_codes])
