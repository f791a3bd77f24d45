"""Tests for ichigo_lib.tokens: sound-token strings, ids, tokenizer layouts and resizing."""

import base64
import pickle
import re

import numpy as np
import pytest
import torch
from fixtures_hub import llama31_special_tokens

from ichigo_lib import tokens as T

RNG = np.random.default_rng(0)


def random_codes(n: int) -> np.ndarray:
    """Random codes that always include both extremes, 0 and the mask code 512."""
    return np.concatenate([[0, T.MASK_CODE], RNG.integers(0, T.NUM_CODES, n)])


# --------------------------------------------------------------------------- strings and ids


def test_sound_tokens_are_513_zero_padded_strings_in_code_order():
    assert T.NUM_CODES == len(T.SOUND_TOKENS) == 513
    assert T.SOUND_TOKENS[0] == "<|sound_0000|>"
    assert T.SOUND_TOKENS[7] == "<|sound_0007|>"
    assert T.SOUND_TOKENS[T.MASK_CODE] == "<|sound_0512|>"
    assert len(set(T.SOUND_TOKENS)) == 513
    assert (T.SOUND_START, T.SOUND_END) == ("<|sound_start|>", "<|sound_end|>")


def test_audio_turn_is_boundaries_around_concatenated_tokens():
    assert T.codes_to_string([3, 512]) == "<|sound_0003|><|sound_0512|>"
    assert T.audio_turn([3, 512]) == "<|sound_start|><|sound_0003|><|sound_0512|><|sound_end|>"


def test_codes_string_round_trip_on_random_codes_bare_and_as_audio_turn():
    codes = random_codes(1000)
    text = T.codes_to_string(codes)
    assert text == "".join(T.SOUND_TOKENS[c] for c in codes)
    for s in (text, T.audio_turn(codes)):
        back = T.string_to_codes(s)
        assert back.dtype == np.int64
        np.testing.assert_array_equal(back, codes)


def test_codes_string_round_trip_is_vectorised_for_a_million_codes():
    codes = RNG.integers(0, T.NUM_CODES, 1_000_000)
    np.testing.assert_array_equal(T.string_to_codes(T.audio_turn(codes)), codes)


def test_empty_inputs_give_empty_outputs():
    assert T.codes_to_string([]) == ""
    assert T.audio_turn(np.array([], dtype=np.int64)) == T.SOUND_START + T.SOUND_END
    for s in ("", T.SOUND_START + T.SOUND_END):
        out = T.string_to_codes(s)
        assert out.dtype == np.int64 and out.shape == (0,)
    assert T.LLAMA31.codes_to_ids([]).shape == (0,)
    assert T.LLAMA31.ids_to_codes([]).shape == (0,)
    assert T.LLAMA31.wrap([]).tolist() == [128256, 128257]


def test_integral_floats_and_torch_tensors_are_accepted_as_codes():
    assert T.codes_to_string([1.0, 512.0]) == T.codes_to_string([1, 512])
    assert T.codes_to_string(torch.tensor([1, 512])) == T.codes_to_string([1, 512])


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        ([0, -1], "code -1 at index 1 is outside 0..512"),
        ([513], "code 513 at index 0 is outside 0..512"),
        ([1, 2.5], "code 2.5 at index 1 is not an integer"),
        ([float("nan")], "code nan at index 0 is not an integer"),
        (["7"], "codes must be integers"),
        ([[1, 2]], "codes must be 1-D"),
    ],
)
def test_bad_codes_raise_naming_value_and_index(codes, message):
    with pytest.raises(T.SoundTokenError, match=message):
        T.codes_to_string(codes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<|sound_0001|><|sound_0513|>", "sound code 513 > 512 at character 14"),
        (
            "<|sound_0001|><|sound_12|>",
            "sound token <|sound_dddd|> at character 14: '<|sound_12|>'",
        ),
        ("<|sound_0001|><|sound_00x1|>", "at character 14: '<|sound_00x1|>'"),
        ("<|sound_0001|> <|sound_0002|>", "at character 14: ' <|sound_0002|>'"),
        ("hello", "at character 0: 'hello'"),
        ("<|sound_0001|>é", "at character 14: 'é'"),
        ("<|sound_start|><|sound_0001|>", "missing <|sound_end|> at character 29: end of text"),
        ("<|sound_0001|><|sound_end|>", "missing <|sound_start|> at character 0"),
        ("<|sound_start|><|sound_start|><|sound_end|>", "at character 15: '<|sound_start|>"),
        (T.audio_turn([1]) + T.audio_turn([2]), "at character 29: '<|sound_end|><|sound"),
    ],
)
def test_malformed_strings_raise_naming_offset_and_snippet(text, message):
    with pytest.raises(T.SoundTokenError, match=re.escape(message)):
        T.string_to_codes(text)


def test_sound_token_error_is_a_value_error():
    assert issubclass(T.SoundTokenError, ValueError)


def test_llama31_ids_codes_round_trip_and_wrap():
    v = T.LLAMA31
    assert (v.start_id, v.end_id, v.first_sound_id) == (128256, 128257, 128258)
    assert v.vocab_size_min == T.LLAMA31_VOCAB_SIZE == 128771
    np.testing.assert_array_equal(v.sound_ids, np.arange(128258, 128771))
    codes = random_codes(500)
    ids = v.codes_to_ids(codes)
    assert ids.dtype == np.int64 and ids[0] == 128258 and ids[1] == 128770
    np.testing.assert_array_equal(v.ids_to_codes(ids), codes)
    np.testing.assert_array_equal(v.codes_to_ids(codes.reshape(2, -1)), ids.reshape(2, -1))
    wrapped = v.wrap(codes)
    assert wrapped[0] == 128256 and wrapped[-1] == 128257
    np.testing.assert_array_equal(wrapped[1:-1], ids)


def test_is_sound_id_excludes_boundaries_and_text_ids():
    mask = T.LLAMA31.is_sound_id([0, 128255, 128256, 128257, 128258, 128770, 128771])
    assert mask.tolist() == [False, False, False, False, True, True, False]


def test_bad_ids_and_codes_raise_naming_value_and_index():
    with pytest.raises(T.SoundTokenError, match="code 513 at index 2"):
        T.LLAMA31.codes_to_ids([0, 1, 513])
    with pytest.raises(T.SoundTokenError, match=r"id 128257 at index 1 is not a sound id"):
        T.LLAMA31.ids_to_codes([128258, 128257])
    with pytest.raises(T.SoundTokenError, match=r"id 5 at index \(1, 0\)"):
        T.LLAMA31.ids_to_codes([[128258], [5]])


def test_sound_vocab_rejects_overlapping_ids():
    with pytest.raises(T.SoundTokenError, match="overlapping"):
        T.SoundVocab(start_id=10, end_id=11, first_sound_id=5)


# --------------------------------------------------------------------------- torchtune tokenizer


@pytest.fixture(scope="module")
def tiktoken_file(tmp_path_factory):
    """A tiny BPE file in Llama-3's ``tokenizer.model`` format: ``base64(bytes) rank`` lines."""
    tokens = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"llo", b"hello", b" w", b"or"]
    path = tmp_path_factory.mktemp("tiktoken") / "tokenizer.model"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return str(path)


@pytest.fixture(scope="module")
def tt_tokenizer(tiktoken_file):
    return T.llama3_s_tokenizer(tiktoken_file, max_seq_len=4096)


def test_llama3_s_tokenizer_has_llama31_sound_ids_and_vocab_size(tt_tokenizer):
    special = tt_tokenizer.special_tokens
    assert special[T.SOUND_START] == 128256 and special[T.SOUND_END] == 128257
    assert [special[t] for t in T.SOUND_TOKENS] == list(range(128258, 128771))
    assert tt_tokenizer.vocab_size == T.LLAMA31_VOCAB_SIZE
    assert special["<|image|>"] == 128011  # moved off 128256
    assert len(set(special.values())) == len(special)
    assert tt_tokenizer.sound_vocab == T.LLAMA31


def test_llama3_s_tokenizer_encodes_each_sound_token_as_one_id(tt_tokenizer):
    codes = random_codes(50)
    text = "hello " + T.audio_turn(codes) + " world"
    ids = tt_tokenizer.encode(text, add_bos=False, add_eos=False)
    plain = tt_tokenizer.encode("hello ", add_bos=False, add_eos=False)
    assert ids[: len(plain)] == plain
    turn = ids[len(plain) : len(plain) + len(codes) + 2]
    assert turn == T.LLAMA31.wrap(codes).tolist()
    assert tt_tokenizer.decode(ids, skip_special_tokens=False) == text
    bos = tt_tokenizer.encode(T.audio_turn([5]))
    assert bos == [tt_tokenizer.bos_id, 128256, 128263, 128257, tt_tokenizer.eos_id]


def test_llama3_s_tokenizer_keeps_long_audio_turns_whole(tt_tokenizer):
    codes = RNG.integers(0, T.NUM_CODES, 3000)  # 42k characters: past torchtune's 25k split
    ids = tt_tokenizer.encode(T.audio_turn(codes), add_bos=False, add_eos=False)
    assert ids == T.LLAMA31.wrap(codes).tolist()


def test_llama3_s_tokenizer_rejects_malformed_sound_tokens_in_text(tt_tokenizer):
    with pytest.raises(T.SoundTokenError, match="at character 6"):
        tt_tokenizer.encode("hello <|sound_12|>")
    with pytest.raises(T.SoundTokenError, match="sound code 513 > 512 at character 35"):
        tt_tokenizer.encode("hello " + T.SOUND_START + "<|sound_0001|><|sound_0513|>")


def test_llama3_s_tokenize_messages_gives_one_id_per_sound_token(tt_tokenizer):
    from torchtune.data import Message

    codes = random_codes(30)
    messages = [
        Message(role="user", content=T.audio_turn(codes), masked=True),
        Message(role="assistant", content="hello world"),
    ]
    tokens, mask = tt_tokenizer.tokenize_messages(messages)
    assert len(tokens) == len(mask)
    start = tokens.index(128256)
    assert tokens[start : start + len(codes) + 2] == T.LLAMA31.wrap(codes).tolist()
    assert sum(T.LLAMA31.is_sound_id(tokens)) == len(codes)
    assert all(mask[start : start + len(codes) + 2])


def test_llama3_s_tokenizer_pickles(tt_tokenizer):
    clone = pickle.loads(pickle.dumps(tt_tokenizer))
    assert clone.encode(T.audio_turn([1])) == tt_tokenizer.encode(T.audio_turn([1]))


# --------------------------------------------------------------------------- HF tokenizers


def word_level_tokenizer(words: list[str], specials: list[str], byte_level: bool = False):
    """A PreTrainedTokenizerFast over ``words + specials`` (specials registered as special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + specials)}, "[UNK]"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def tiny_words() -> list[str]:
    return ["[UNK]"] + [f"w{i}" for i in range(49)]


def assert_sound_encoding(tokenizer, layout: T.SoundVocab):
    text = "<|sound_start|><|sound_0007|><|sound_0512|><|sound_end|>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    s = layout.first_sound_id
    assert ids == [layout.start_id, s + 7, s + 512, layout.end_id]
    codes = random_codes(100)
    ids = tokenizer(T.audio_turn(codes), add_special_tokens=False).input_ids
    assert ids == layout.wrap(codes).tolist()
    assert tokenizer.decode(ids) == T.audio_turn(codes)


def test_extend_hf_tokenizer_on_llama31_layout_gives_llama31_ids():
    words = ["[UNK]"] + [f"w{i}" for i in range(127_999)]
    tokenizer = word_level_tokenizer(words, llama31_special_tokens(), byte_level=True)
    assert len(tokenizer) == 128256
    assert T.extend_hf_tokenizer(tokenizer) == T.LLAMA31
    assert len(tokenizer) == T.LLAMA31_VOCAB_SIZE
    assert_sound_encoding(tokenizer, T.LLAMA31)
    assert T.sound_vocab_of(tokenizer) == T.LLAMA31


def test_extend_hf_tokenizer_on_tiny_tokenizer_is_contiguous_after_its_vocab():
    tokenizer = word_level_tokenizer(tiny_words(), ["<s>", "</s>", "<pad>"])
    assert len(tokenizer) == 53
    layout = T.extend_hf_tokenizer(tokenizer)
    assert layout == T.SoundVocab(53, 54, 55)
    assert len(tokenizer) == layout.vocab_size_min == 53 + 515
    assert_sound_encoding(tokenizer, layout)
    assert tokenizer("w3 w4", add_special_tokens=False).input_ids == [4, 5]
    assert {T.SOUND_START, T.SOUND_END} <= set(tokenizer.all_special_tokens)


def test_extend_hf_tokenizer_is_idempotent():
    tokenizer = word_level_tokenizer(tiny_words(), ["<s>"])
    first = T.extend_hf_tokenizer(tokenizer)
    size = len(tokenizer)
    assert T.extend_hf_tokenizer(tokenizer) == first
    assert len(tokenizer) == size


def test_extend_hf_tokenizer_refuses_partially_present_sound_tokens():
    tokenizer = word_level_tokenizer(tiny_words(), ["<s>"])
    tokenizer.add_tokens(["<|sound_0007|>"])
    with pytest.raises(T.SoundTokenError, match="already holds 1 of the 515"):
        T.extend_hf_tokenizer(tokenizer)


def test_extend_hf_tokenizer_refuses_sound_tokens_in_another_order():
    tokenizer = word_level_tokenizer(tiny_words(), ["<s>"])
    tokenizer.add_tokens(list(T.SOUND_TOKENS))
    tokenizer.add_tokens([T.SOUND_START, T.SOUND_END], special_tokens=True)
    assert T.sound_vocab_of(tokenizer) == T.SoundVocab(564, 565, 51)
    with pytest.raises(T.SoundTokenError, match="not laid out start, end, sounds"):
        T.extend_hf_tokenizer(tokenizer)


def test_sound_vocab_of_explains_missing_or_shuffled_tokens():
    tokenizer = word_level_tokenizer(tiny_words(), ["<s>"])
    with pytest.raises(T.SoundTokenError, match="lacks 515 of the 515"):
        T.sound_vocab_of(tokenizer)
    tokenizer.add_tokens([T.SOUND_START, T.SOUND_END], special_tokens=True)
    tokenizer.add_tokens([T.SOUND_TOKENS[1], T.SOUND_TOKENS[0], *T.SOUND_TOKENS[2:]])
    with pytest.raises(T.SoundTokenError, match=r"<\|sound_0001\|> has id 53, expected 55"):
        T.sound_vocab_of(tokenizer)


# --------------------------------------------------------------------------- resizing


def test_mean_extend_keeps_old_rows_and_appends_exact_means():
    w = torch.randn(10, 4)
    out = T.mean_extend(w, 3)
    assert out.shape == (13, 4)
    assert torch.equal(out[:10], w)
    assert torch.equal(out[10:], w.mean(0).expand(3, 4))
    assert torch.equal(T.mean_extend(w, 0), w)
    half = T.mean_extend(w.bfloat16(), 2)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half[10], w.bfloat16().float().mean(0).bfloat16())
    with pytest.raises(ValueError, match="num_new"):
        T.mean_extend(w, -1)


NEW_VOCAB = 64 + 515


def hf_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def torchtune_llama(tie: bool):
    """Tiny torchtune Llama-3 (untied nn.Linear head) or Llama-3.2 (TiedLinear head)."""
    from torchtune.models.llama3 import llama3
    from torchtune.models.llama3_2 import llama3_2

    torch.manual_seed(0)
    sizes = dict(num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32, max_seq_len=64)
    if tie:
        return llama3_2(
            vocab_size=64, intermediate_dim=64, tie_word_embeddings=True, **sizes
        ).eval()
    return llama3(vocab_size=64, intermediate_dim=64, **sizes).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def check_resized(model, emb, head_weight, old_emb, old_head, old_logits, ids):
    assert emb.weight.shape == (NEW_VOCAB, 32) and emb.num_embeddings == NEW_VOCAB
    assert torch.equal(emb.weight[:64], old_emb)
    assert torch.equal(emb.weight[64:], old_emb.mean(0).expand(515, 32))
    assert torch.equal(head_weight[:64], old_head)
    assert torch.equal(head_weight[64:], old_head.mean(0).expand(515, 32))
    new_logits = logits(model, ids)
    assert new_logits.shape[-1] == NEW_VOCAB
    torch.testing.assert_close(new_logits[..., :64], old_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        new_logits[..., 64:], old_logits.mean(-1, keepdim=True).expand(*ids.shape, 515)
    )
    with_new = torch.cat([ids, torch.tensor([[NEW_VOCAB - 1]])], 1)
    assert torch.isfinite(logits(model, with_new)).all()


@pytest.mark.parametrize("tie", [False, True])
def test_resize_hf_llama_mean_initialises_new_rows(tie):
    model = hf_llama(tie)
    ids = torch.randint(0, 64, (1, 8))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    old_emb, old_head = emb.weight.detach().clone(), head.weight.detach().clone()
    old_logits = logits(model, ids)
    T.resize_token_embeddings(model, NEW_VOCAB)
    assert model.get_input_embeddings() is emb and model.get_output_embeddings() is head
    assert (head.weight is emb.weight) == tie
    assert head.out_features == model.config.vocab_size == NEW_VOCAB
    assert emb.weight.requires_grad and head.weight.requires_grad
    check_resized(model, emb, head.weight, old_emb, old_head, old_logits, ids)
    labels = torch.full((1, 9), NEW_VOCAB - 1)
    loss = model(torch.cat([ids, labels[:, :1]], 1), labels=labels).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("tie", [False, True])
def test_resize_torchtune_llama_mean_initialises_new_rows(tie):
    from torchtune.modules import TiedLinear

    model = torchtune_llama(tie)
    ids = torch.randint(0, 64, (1, 8))
    emb = model.tok_embeddings
    head_weight = (lambda: emb.weight) if tie else (lambda: model.output.weight)
    old_emb, old_head = emb.weight.detach().clone(), head_weight().detach().clone()
    old_logits = logits(model, ids)
    T.resize_token_embeddings(model, NEW_VOCAB)
    assert isinstance(model.output, TiedLinear) == tie
    if not tie:
        assert model.output.out_features == NEW_VOCAB
    check_resized(model, emb, head_weight(), old_emb, old_head, old_logits, ids)


def test_resize_refuses_to_shrink_and_is_a_no_op_at_same_size():
    model = torchtune_llama(False)
    before = model.tok_embeddings.weight
    T.resize_token_embeddings(model, 64)
    assert model.tok_embeddings.weight is before
    with pytest.raises(ValueError, match="cannot shrink vocabulary from 64 to 63"):
        T.resize_token_embeddings(model, 63)
