"""Notebook 06's analysis helpers: space sizes and entropies, per-token losses and final hidden
states of a real (tiny, random) HF checkpoint, the 2-D projection, probes and sweeps."""

import math

import numpy as np
import pytest

from ichigo_lib import tokens as T
from ichigo_lib.checkpoints import write_llama_init, write_sound_init
from ichigo_lib.config import LlamaArch
from ichigo_lib.data.refusals import refusal_pool
from ichigo_lib.evaluate import inaudible as A
from ichigo_lib.wordtok import build_word_tokenizer
from ichigo_lib.world import words

ARCH = LlamaArch(
    num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=256
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    vocab = sorted({w for r in refusal_pool() for w in words(r)} | {"Parvel"})
    base = write_llama_init(ARCH, build_word_tokenizer(vocab), tmp / "base", seed=0)
    write_sound_init(base, tmp / "init")
    return tmp / "init"


def test_entropy_of_uniform_and_constant_tables():
    from collections import Counter

    assert A.entropy_bits(Counter({i: 5 for i in range(8)})) == pytest.approx(3.0)
    assert A.entropy_bits(Counter({7: 10})) == pytest.approx(0.0)
    repeat = [np.array([1, 2, 1, 2, 1, 2])]
    assert A.conditional_entropy_bits(repeat) == pytest.approx(0.0)  # next code is determined


def test_combinatorics_counts_arrangements_ngrams_and_entropy():
    rng = np.random.default_rng(0)
    speech = [np.array([3, 4, 5, 3, 4, 5]), np.array([3, 4, 5, 3]), np.array([3, 4, 5, 3])]
    rand = [rng.integers(0, 513, size=len(s)) for s in speech]
    size = A.combinatorics(speech, rand, max_n=2)
    assert size.sequences == 3 and size.distinct_sequences == 2
    assert size.log10_arrangements_at_mean_length == pytest.approx(
        np.mean([6, 4, 4]) * math.log10(513)
    )
    assert size.log10_arrangements_total == pytest.approx(math.log10(513**6 + 513**4))
    unigram, bigram = size.ngrams
    assert (unigram["speech_distinct"], bigram["speech_distinct"]) == (3, 3)  # 34 45 53
    assert bigram["possible"] == 513**2
    assert size.entropy_speech_bits == pytest.approx(math.log2(3), abs=0.1)
    assert size.entropy_speech_bits < size.entropy_random_bits <= size.max_entropy_bits


def test_replace_fraction_changes_that_many_positions():
    rng = np.random.default_rng(1)
    codes = np.full(200, 600 - 600)  # all zeros
    assert np.array_equal(A.replace_fraction(codes, 0.0, rng), codes)
    half = A.replace_fraction(codes, 0.5, rng)
    assert 90 <= int((half != 0).sum()) <= 100  # 100 replaced; a few draw 0 again
    assert half.max() <= 512 and codes.sum() == 0  # the input is not modified
    with pytest.raises(ValueError, match="fraction"):
        A.replace_fraction(codes, 1.5, rng)


def test_crossing_interpolates_the_first_reach():
    assert A.crossing([0, 0.5, 1.0], [0.0, 0.2, 0.8]) == pytest.approx(0.75)
    assert A.crossing([0, 1], [0.6, 1.0]) == 0
    assert math.isnan(A.crossing([0, 1], [0.1, 0.2]))


def test_token_losses_cover_the_sound_tokens_only(model_dir):
    seqs = [np.array([1, 2, 3, 4]), np.array([7] * 9)]
    losses = A.token_losses(model_dir, seqs, batch_size=2)
    assert [len(x) for x in losses] == [4, 9]
    assert all(np.isfinite(x).all() and (x > 0).all() for x in losses)
    alone = A.token_losses(model_dir, seqs[:1], batch_size=1)
    np.testing.assert_allclose(alone[0], losses[0], rtol=1e-4)  # padding changes nothing


def test_final_hidden_states_do_not_depend_on_left_padding(model_dir):
    seqs = [np.array([1, 2, 3]), np.array([9] * 12), np.array([4, 4])]
    states = A.final_hidden_states(model_dir, seqs, batch_size=3)
    assert states.shape == (3, ARCH.embed_dim)
    one = A.final_hidden_states(model_dir, seqs[:1], batch_size=1)
    np.testing.assert_allclose(one[0], states[0], rtol=1e-3, atol=1e-4)


def test_projection_and_probe_separate_two_clouds():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, size=(40, 16))
    b = rng.normal(0, 1, size=(40, 16)) + 4
    coords, ratio = A.project_2d(np.concatenate([a, b]))
    assert coords.shape == (80, 2) and ratio[0] > ratio[1]
    assert A.probe_accuracy(np.concatenate([a, b]), [0] * 40 + [1] * 40) > 0.95
    mixed = rng.normal(size=(80, 16))
    assert A.probe_accuracy(mixed, [0, 1] * 40) < 0.8


def test_refusal_rates_per_group_in_one_pass(model_dir):
    groups = {
        "inaudible": [A.user_turn(np.array([5, 6, 7]))] * 2,
        "speech": [A.user_turn(np.array([1, 2]))],
    }
    rates, replies = A.refusal_rates(model_dir, groups, max_new_tokens=3)
    assert set(rates) == {"inaudible", "speech"} and [len(replies[k]) for k in groups] == [2, 1]
    assert all(0 <= r <= 1 for r in rates.values())
    assert T.SOUND_START not in replies["speech"][0]
