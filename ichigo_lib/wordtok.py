"""The tiny profile's word-level tokenizer, one ``tokenizer.json`` for torchtune and transformers.

One token per word (so a fact's answer is one token) plus Llama-3's chat special tokens. The
same file backs :class:`WordTokenizer` (a torchtune ``ModelTokenizer`` that formats chats
exactly like torchtune's ``Llama3Tokenizer``) and a transformers ``PreTrainedTokenizerFast``
with the Llama-3 chat template, so training (torchtune) and evaluation (lm-evaluation-harness)
see identical ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from torchtune.data import Message
from torchtune.modules.transforms import Transform
from transformers import PreTrainedTokenizerFast

from ichigo_lib.errors import IchigoError

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<unk>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, START_HEADER, END_HEADER, EOT)
WORD_PATTERN = r"\w+|[^\w\s]"
# the roles a chat header spells (torchtune's Message roles): without them every header is <unk>
ROLE_WORDS = ("system", "user", "assistant", "ipython", "tool")

# Llama-3's template (no system prompt is added): the same layout torchtune's Llama3Tokenizer emits.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


def build_word_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over ``vocabulary`` and the chat roles (special tokens first)."""
    words = [w for w in dict.fromkeys([*ROLE_WORDS, *vocabulary]) if w not in SPECIAL_TOKENS]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), "isolated")]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


class WordTokenizer(Transform):
    """torchtune ``ModelTokenizer`` over a ``tokenizer.json`` in the Llama-3 chat layout: the tiny
    word-level one, or (``full``, ``small``: notebook 01's checkpoint keeps no tiktoken file) a
    byte-level BPE such as Llama-3.1's."""

    def __init__(self, path: str | Path, max_seq_len: int | None = None):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        self._tok = Tokenizer.from_file(str(path))
        self.max_seq_len = max_seq_len
        self.special_tokens = {
            t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
        }
        ids = self._tok.get_vocab(with_added_tokens=True)
        self.bos_id, self.eos_id, self.pad_id = ids[BOS], ids[EOS], ids[PAD]
        self.start_header_id, self.end_header_id, self.eot_id = (
            ids[START_HEADER],
            ids[END_HEADER],
            ids[EOT],
        )
        self.stop_tokens = [self.eos_id, self.eot_id]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def tokenize_message(self, message: Message, add_end_tokens: bool = True) -> list[int]:
        # Llama-3's header: role between the header ids, then two newlines (no token in the
        # word-level vocabulary; one in a byte-level BPE ``tokenizer.json`` such as Llama-3.1's)
        header = [self.start_header_id, *self.encode(message.role, False, False)]
        header += [self.end_header_id, *self.encode("\n\n", False, False)]
        body = self.encode(message.text_content.strip(), False, False)
        return header + body + [self.eot_id] * add_end_tokens

    def tokenize_messages(
        self, messages: list[Message], *, add_end_tokens: bool = True
    ) -> tuple[list[int], list[bool]]:
        """Llama-3 layout: BOS, then per message header + content + EOT, then EOS.

        Unlike torchtune's tokenizers this never truncates: an over-long conversation raises,
        so the dataset builders can count and report such rows instead of cutting them.
        """
        tokens, mask = [self.bos_id], [True]
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            ids = self.tokenize_message(message, add_end_tokens or not last)
            tokens += ids
            mask += [message.masked] * len(ids)
        if add_end_tokens:
            tokens.append(self.eos_id)
            mask.append(True)
        if self.max_seq_len is not None and len(tokens) > self.max_seq_len:
            raise OverLongError(len(tokens), self.max_seq_len)
        return tokens, mask

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        tokens, mask = self.tokenize_messages(sample.pop("messages"), add_end_tokens=not inference)
        sample.update(tokens=tokens, mask=mask)
        return sample


class OverLongError(IchigoError, ValueError):
    """A sequence longer than ``max_seq_len``: counted and reported by callers, never cut."""

    def __init__(self, length: int, max_seq_len: int):
        super().__init__(f"sequence of {length} tokens exceeds max_seq_len={max_seq_len}")
        self.length, self.max_seq_len = length, max_seq_len


def word_tokenizer(path: str, max_seq_len: int | None = None) -> WordTokenizer:
    """torchtune ``_component_`` builder for :class:`WordTokenizer`."""
    return WordTokenizer(path, max_seq_len=max_seq_len)
