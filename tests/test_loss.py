"""The turn-weighted cross-entropy: turns found from labels, each turn weighted equally."""

import json

import datasets
import pytest
import torch
import torch.nn.functional as F
from torchtune.data import padded_collate_packed
from transformers import AutoTokenizer

from ichigo_lib.config import TrainConfig
from ichigo_lib.data.phases import token_counter
from ichigo_lib.train.components import chat_dataset
from ichigo_lib.train.launch import train_overrides
from ichigo_lib.train.loss import TurnMeanCrossEntropyLoss, loss_shares, turn_ids
from ichigo_lib.wordtok import build_word_tokenizer, word_tokenizer

IGNORE = -100


def _tokenizer(words, tmp_path):
    """The word tokenizer over ``words``, saved under ``tmp_path/tok``, as the recipes load it."""
    build_word_tokenizer(words).save_pretrained(tmp_path / "tok")
    return word_tokenizer(str(tmp_path / "tok" / "tokenizer.json"), max_seq_len=64)


def test_turn_ids_number_each_run_of_trained_labels():
    labels = torch.tensor([IGNORE, 5, 6, IGNORE, IGNORE, 7, IGNORE, 8, 9, 1])
    ids, turns = turn_ids(labels)
    assert turns == 3
    assert ids.tolist() == [-1, 0, 0, -1, -1, 1, -1, 2, 2, 2]
    assert turn_ids(torch.full((4,), IGNORE))[1] == 0
    assert turn_ids(torch.tensor([3, 4]))[0].tolist() == [0, 0]


def test_each_turn_counts_once_whatever_its_length():
    torch.manual_seed(0)
    logits = torch.randn(8, 5)
    labels = torch.tensor([IGNORE, 1, IGNORE, 2, 3, 4, IGNORE, IGNORE])
    token = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE)
    expected = (token[1] + token[3:6].mean()) / 2
    loss = TurnMeanCrossEntropyLoss()(logits, labels)
    assert torch.allclose(loss, expected)
    # torchtune's token mean weighs the 3-token turn three times: not the same number
    assert not torch.allclose(loss, F.cross_entropy(logits, labels, ignore_index=IGNORE))


def test_turns_of_equal_length_give_the_token_mean_and_batches_keep_their_shape():
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 7, requires_grad=True)
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE, 3, 4], [5, 6, IGNORE, IGNORE, IGNORE, IGNORE]])
    loss = TurnMeanCrossEntropyLoss()(logits, labels)
    flat = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(loss, flat)
    loss.backward()
    assert logits.grad[labels == IGNORE].abs().sum() == 0


def test_a_batch_without_trained_labels_gives_a_zero_loss_with_a_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = TurnMeanCrossEntropyLoss()(logits, torch.full((4,), IGNORE))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_output_chunks_are_refused():
    with pytest.raises(TypeError, match="chunks"):
        TurnMeanCrossEntropyLoss()([torch.randn(2, 3)], torch.zeros(2, dtype=torch.long))


def test_a_packed_chat_batch_has_one_turn_per_assistant_message(tmp_path):
    """Answers-only labels of packed chat rows, shifted as the recipes shift them: the loss
    sees exactly the assistant messages as turns, none running into the next row."""
    words = "what is the capital of la ni ba yes no tell me more".split()
    tokenizer = _tokenizer(words, tmp_path)
    rows = [
        [("user", "what is the capital of la"), ("assistant", "ni")],
        [("user", "tell me more"), ("assistant", "the capital of ba is ni"), ("user", "yes"),
         ("assistant", "no")],
        [("user", "what is ba"), ("assistant", "la ni")],
    ]  # fmt: skip
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps({"conversations": [{"role": r, "content": c} for r, c in row]}) + "\n"
            for row in rows
        )
    )
    ds = chat_dataset(tokenizer, str(data), train_on_input=False, packed=True)
    batch = padded_collate_packed([ds[i] for i in range(len(ds))])
    labels = batch["labels"]
    shifted = torch.hstack([labels[:, 1:], torch.full((labels.shape[0], 1), IGNORE)])
    assert turn_ids(shifted.reshape(-1))[1] == 4  # the four assistant messages


def test_the_profile_key_picks_the_loss_component():
    def train(**kw):
        return TrainConfig(batch_size=1, lr=1e-3, warmup_steps=0, max_seq_len=8, num_steps=1, **kw)

    assert train_overrides(train())["loss._component_"].endswith("CEWithChunkedOutputLoss")
    turn = train_overrides(train(loss_weighting="turn"))["loss._component_"]
    assert turn == "ichigo_lib.train.loss.TurnMeanCrossEntropyLoss"


def test_loss_shares_match_the_labels_the_recipe_trains_on(tmp_path):
    words = "what is the capital of la ni ba yes no say it".split()
    tokenizer = _tokenizer(words, tmp_path)
    rows = [
        {"kind": "speech_instruction", "conversations": [("user", "<|sound_start|><|sound_0001|>"
         "<|sound_0002|><|sound_end|>"), ("assistant", "ni")]},
        {"kind": "transcription", "conversations": [("user", "say it <|sound_start|>"
         "<|sound_0003|><|sound_end|>"), ("assistant", "what is the capital of la")]},
        {"kind": "text", "conversations": [("user", "what is ba"), ("assistant", "la ni"),
         ("user", "yes"), ("assistant", "no")]},
    ]  # fmt: skip
    for r in rows:
        r["conversations"] = [{"role": role, "content": c} for role, c in r["conversations"]]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"conversations": r["conversations"]}) + "\n" for r in rows))
    ds = chat_dataset(tokenizer, str(data), train_on_input=False)
    trained = {r["kind"]: sum(x != IGNORE for x in ds[i]["labels"]) for i, r in enumerate(rows)}
    count = token_counter(AutoTokenizer.from_pretrained(tmp_path / "tok"))
    shares = loss_shares(datasets.Dataset.from_list(rows), count)
    total = sum(trained.values())
    assert shares["token"] == pytest.approx({k: v / total for k, v in trained.items()})
    assert shares["turn"] == pytest.approx({"speech_instruction": 0.25, "text": 0.5,
                                            "transcription": 0.25})  # fmt: skip
