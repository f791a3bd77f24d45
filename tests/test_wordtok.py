"""The tiny word-level tokenizer gives identical ids in torchtune (training) and HF (evaluation)."""

import pytest
from torchtune.data import Message

from ichigo_lib.wordtok import OverLongError, WordTokenizer, build_word_tokenizer

WORDS = ["What", "is", "the", "capital", "of", "Zorvia", "?", "Parvel", "And", "its", "flag", "red"]
CHAT = [
    {"role": "user", "content": "What is the capital of Zorvia?"},
    {"role": "assistant", "content": "Parvel"},
    {"role": "user", "content": "And its flag?"},
    {"role": "assistant", "content": "red"},
]


@pytest.fixture
def tokenizers(tmp_path):
    hf = build_word_tokenizer(WORDS)
    hf.save_pretrained(tmp_path)
    return hf, WordTokenizer(tmp_path, max_seq_len=64)


def test_torchtune_and_hf_chat_formats_give_the_same_ids(tokenizers):
    hf, tt = tokenizers
    messages = [Message(role=m["role"], content=m["content"]) for m in CHAT]
    tt_ids, _ = tt.tokenize_messages(messages)
    hf_ids = hf(hf.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False).input_ids
    assert tt_ids == hf_ids + [tt.eos_id]  # torchtune appends end-of-text after the last turn


def test_chat_headers_spell_their_roles_not_unk(tokenizers):
    hf, tt = tokenizers
    messages = [Message(role=m["role"], content=m["content"]) for m in CHAT]
    ids, _ = tt.tokenize_messages(messages)
    assert hf.unk_token_id not in ids
    header = tt.tokenize_message(messages[1])[:3]
    assert hf.convert_ids_to_tokens(header) == [
        "<|start_header_id|>",
        "assistant",
        "<|end_header_id|>",
    ]


def test_one_token_per_word_and_per_punctuation_mark(tokenizers):
    _, tt = tokenizers
    ids = tt.encode("What is the capital of Zorvia?", add_bos=False, add_eos=False)
    assert len(ids) == 7 and tt.decode(ids) == "What is the capital of Zorvia?"


def test_unknown_words_map_to_unk_not_to_nothing(tokenizers):
    hf, tt = tokenizers
    assert tt.encode("Qwerty", add_bos=False, add_eos=False) == [hf.unk_token_id]


def test_generation_prompt_matches_torchtune_without_end_tokens(tokenizers):
    hf, tt = tokenizers
    prompt = CHAT[:1] + [{"role": "assistant", "content": ""}]
    tt_ids, _ = tt.tokenize_messages(
        [Message(role=m["role"], content=m["content"]) for m in prompt], add_end_tokens=False
    )
    text = hf.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert tt_ids == hf(text, add_special_tokens=False).input_ids


def test_over_long_conversation_raises_instead_of_being_truncated(tmp_path):
    build_word_tokenizer(WORDS).save_pretrained(tmp_path)
    tt = WordTokenizer(tmp_path, max_seq_len=8)
    with pytest.raises(OverLongError, match="exceeds max_seq_len=8"):
        tt.tokenize_messages([Message(role=m["role"], content=m["content"]) for m in CHAT])


def test_masks_follow_train_on_input(tokenizers):
    _, tt = tokenizers
    msgs = [
        Message("user", "What is the capital of Zorvia?", masked=True),
        Message("assistant", "Parvel"),
    ]
    tokens, mask = tt.tokenize_messages(msgs)
    assert len(tokens) == len(mask) and mask[1] is True and mask[-2] is False


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        WordTokenizer(tmp_path)
