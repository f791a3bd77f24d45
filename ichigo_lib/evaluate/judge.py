"""AudioBench-style judging of answers to spoken instructions: a 0-5 rating per answer.

``LLMJudge`` asks an LLM to rate each answer against the reference under a :class:`Rubric`: the
book's (``BOOK``: a prompt in the spirit of AudioBench's, read by the tolerant
:func:`parse_rating`) or AudioBench's own (``AUDIOBENCH``: its prompt and parse rule, for the
AudioBench sets); ``ReferenceMatchJudge`` is a deterministic stand-in for the toy profiles. Both
return the judge's raw reply and its parsed rating.

AudioBench's rule: an answer whose judgement fails scores 0 and still counts. A judge call that
fails after its retries (timeout, 5xx, malformed JSON) is a *judge failure* recorded with its
reason; a reply without a usable rating (retried under the book's rubric; AudioBench asks once)
is a *parse failure*; neither stops the run, and ``summarise`` counts both.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ichigo_lib.evaluate.wer import normalise
from ichigo_lib.llm_client import ChatClient, EndpointError

MAX_RATING = 5

RUBRIC = """\
You are grading an AI assistant's answer to a question that a user asked by voice. Compare the \
model's answer with the reference answer and rate how well it matches the reference in \
content, accuracy and relevance. Be strict about details: wording may differ, facts may not.

[Question]
{question}

[Reference Answer]
{reference}

[Model Answer]
{answer}

Rating scale:
0: The answer is unrelated to the question, empty, refuses to answer, or contradicts the \
reference entirely.
1: The answer touches on the topic but its substance is wrong or misses the point of the \
reference.
2: The answer gets a small part of the reference right, but the main content is wrong or \
missing.
3: The answer captures the main idea of the reference, with clear errors or omissions in the \
details.
4: The answer agrees with the reference in substance, with only minor inaccuracies, omissions \
or irrelevant additions.
5: The answer fully matches the reference: accurate, complete and relevant.

Reply with one or two sentences explaining how the model answer compares with the reference, \
then end with a final line of the form "Rating: N", where N is an integer from 0 to 5."""

# AudioBench's judge prompt, word for word (AudioLLMs/AudioBench and janhq/AudioBench,
# src/dataset_src/eval_methods/eval_gpt4.py; the same text in eval_llama3_70b.py), without the
# 12 spaces of source indentation its lines carry there; its {prediction} is our {answer}.
# Upstream sampled GPT-4 at temperature 0.7; our endpoint asks at its temperature (0 by default).
AUDIOBENCH_RUBRIC = """\
[Reference Answer]
{reference}

[Model Answer]
{answer}

[Question]
{question}

[Task]
Rate the model's answer based on its alignment with the reference answer, focusing on accuracy \
and relevance to the reference provided. Please be critical on the details.
Criteria: Assess if the model's response mirrors the reference in terms of content, accuracy, \
and relevance.
Score0: The answer is completely misaligned, providing incorrect or irrelevant information \
compared to the reference.
Score1: The answer shows minimal alignment, often misunderstanding or providing irrelevant \
details unrelated to the reference.
Score2: The answer recognizes the topic but diverges significantly from the reference in \
accuracy or relevance.
Score3: The answer aligns with the reference generally but lacks detail or precise accuracy in \
some aspects.
Score4: The answer is mostly accurate and relevant, closely following the reference but could \
be clearer or more detailed.
Score5: The answer is highly accurate, detailed, and matches the reference answer perfectly, \
capturing its essence and detail.

Your response should be formatted as follows:
Explanation: (Provide a concise explanation of your rating, comparing the reference answer with \
the model's response. "The reference answer is [XXX], while the model's answer is [YYY]. I \
think ...")
Rating: (int)"""

# "Rating" then separators/markdown ("**Rating:** [[4]]"), an integer or decimal, maybe "/5".
_RATING = re.compile(r"\brating\b[\s*_:=\[(\"']*(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?", re.I)


NO_RATING = "no rating"


@dataclass(frozen=True)
class JudgeResult:
    """One judged answer: the rating (None when there is no usable one), the judge's reply and,
    for a judge call that failed, ``failure``: its kind (``timeout``, ``HTTP 500``, ...), with
    the error's message as ``raw``."""

    rating: float | None
    raw: str
    failure: str | None = None

    @property
    def score(self) -> float:
        """The rating, 0 when there is none (AudioBench's rule)."""
        return 0 if self.rating is None else self.rating


class Judge(Protocol):
    """Rates answers 0-5 against references; ``name`` goes into reports."""

    name: str

    def score(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]
    ) -> list[JudgeResult]: ...

    def with_rubric(self, rubric: Rubric) -> Judge: ...


def parse_rating(reply: str) -> int | None:
    """The last ``Rating: N`` in ``reply`` as an int in 0-5, else None.

    Tolerates case, markdown and brackets (``**Rating:** [[4]]``) and a ``/5`` suffix. Out of
    range values, decimals (``4.5``: the rubric asks for an integer, so it is not rounded) and
    other denominators (``8/10``) give None, i.e. a parse failure.
    """
    matches = _RATING.findall(reply)
    if not matches:
        return None
    number, denominator = matches[-1]
    if "." in number or denominator not in ("", str(MAX_RATING)):
        return None
    rating = int(number)
    return rating if 0 <= rating <= MAX_RATING else None


def parse_audiobench_rating(reply: str) -> float | None:
    """AudioBench's rule: the reply's last whitespace-separated token read as a number
    (``float(reply.split()[-1])``), None when it is not one (AudioBench then scores 0).

    ``Rating: 4`` and ``Rating: 4.`` give 4, but so does prose ending in a number, while
    ``Rating: **4**`` or ``Rating: 4/5`` give None. Unlike AudioBench (which averages whatever
    parses), a value that is not finite or lies outside 0-5 also gives None.
    """
    words = reply.split()
    try:
        value = float(words[-1]) if words else math.nan
    except ValueError:
        return None
    if not (math.isfinite(value) and 0 <= value <= MAX_RATING):
        return None
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class Rubric:
    """A judge prompt (with ``{question}``, ``{reference}``, ``{answer}``) and how its replies
    are read; ``retry_unparsed``: ask again when a reply has no rating (AudioBench asks once)."""

    name: str
    template: str
    parse: Callable[[str], float | None]
    retry_unparsed: bool

    def problem(self, reply: str) -> str | None:
        """``accept`` for the judge's client: whether a reply without a rating is retried."""
        return NO_RATING if self.retry_unparsed and self.parse(reply) is None else None


BOOK = Rubric("book", RUBRIC, parse_rating, retry_unparsed=True)
AUDIOBENCH = Rubric("audiobench", AUDIOBENCH_RUBRIC, parse_audiobench_rating, retry_unparsed=False)
RUBRICS = {r.name: r for r in (BOOK, AUDIOBENCH)}


def judge_messages(
    question: str, answer: str, reference: str, rubric: Rubric = BOOK
) -> list[dict[str, str]]:
    """The chat request that asks a judge to rate ``answer`` under ``rubric``."""
    prompt = rubric.template.format(question=question, reference=reference, answer=answer)
    return [{"role": "user", "content": prompt}]


def _check_lengths(questions: Sequence[str], answers: Sequence[str], refs: Sequence[str]) -> None:
    if not len(questions) == len(answers) == len(refs):
        raise ValueError(
            f"need one answer and one reference per question, got {len(questions)} questions, "
            f"{len(answers)} answers, {len(refs)} references"
        )


class LLMJudge:
    """An LLM behind an OpenAI-compatible endpoint, prompted with ``rubric``; its name is the
    model's, plus the rubric's unless it is the book's."""

    def __init__(self, client: ChatClient, rubric: Rubric = BOOK) -> None:
        self.client = client
        self.rubric = rubric
        suffix = "" if rubric is BOOK else f" ({rubric.name} rubric)"
        self.name = f"llm:{client.endpoint.model}{suffix}"

    def with_rubric(self, rubric: Rubric) -> LLMJudge:
        """The same endpoint (and reply cache) asked with ``rubric``."""
        return LLMJudge(self.client, rubric)

    def score(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]
    ) -> list[JudgeResult]:
        _check_lengths(questions, answers, references)
        requests = [
            judge_messages(q, a, r, self.rubric)
            for q, a, r in zip(questions, answers, references, strict=True)
        ]
        replies = self.client.complete_many(requests, self.rubric.problem, return_errors=True)
        return [self._result(reply) for reply in replies]

    def _result(self, reply: str | EndpointError) -> JudgeResult:
        if not isinstance(reply, EndpointError):
            return JudgeResult(self.rubric.parse(reply), reply)
        if reply.reason == NO_RATING:  # a reply came back, never with a rating
            return JudgeResult(None, reply.reply or "")
        return JudgeResult(None, str(reply), failure=reply.reason)


class ReferenceMatchJudge:
    """Deterministic word matching on ``wer.normalise``d text, for the toy profiles.

    5 when the reference's words appear in the answer in order with at most
    ``max_extra_words`` other words; otherwise ``round(5 * F1)`` of the bag-of-words overlap
    (halves round up), capped at 4; 0 for an empty answer. The question is not used.
    """

    name = "reference-match"

    def __init__(self, max_extra_words: int = 3) -> None:
        self.max_extra_words = max_extra_words

    def with_rubric(self, rubric: Rubric) -> ReferenceMatchJudge:
        """Itself: word matching reads no prompt, and its ``Rating: N`` parses under any rule."""
        return self

    def score(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]
    ) -> list[JudgeResult]:
        _check_lengths(questions, answers, references)
        results = []
        for i, (answer, reference) in enumerate(zip(answers, references, strict=True)):
            rating = self.rate(answer, reference, index=i)
            results.append(JudgeResult(rating, f"Rating: {rating}"))
        return results

    def rate(self, answer: str, reference: str, index: int = 0) -> int:
        """The rating of one ``answer``; ``index`` only labels an empty-reference error."""
        ref, ans = normalise(reference).split(), normalise(answer).split()
        if not ref:
            raise ValueError(f"reference {index} has no words after normalisation: {reference!r}")
        if not ans:
            return 0
        remaining = iter(ans)
        in_order = all(word in remaining for word in ref)  # subsequence test
        if in_order and len(ans) - len(ref) <= self.max_extra_words:
            return MAX_RATING
        overlap = sum((Counter(ref) & Counter(ans)).values())
        f1 = 2 * overlap / (len(ref) + len(ans))
        return min(MAX_RATING - 1, int(MAX_RATING * f1 + 0.5))


def summarise(results: Sequence[JudgeResult]) -> dict[str, Any]:
    """The counts and means of ``results``: ``judge_score_mean`` over every item (0 for a failed
    judgement, as AudioBench scores; None when there are no items), ``judge_score_mean_rated``
    over rated items only, and ``judge_rated + judge_parse_failures + judge_failures ==
    judge_n``; ``judge_failure_reasons`` counts failures by kind."""
    ratings = [r.rating for r in results if r.rating is not None]
    failures = [r.failure for r in results if r.failure is not None]
    return {
        "judge_score_mean": statistics.fmean(r.score for r in results) if results else None,
        "judge_score_mean_rated": statistics.fmean(ratings) if ratings else None,
        "judge_rated": len(ratings),
        "judge_parse_failures": len(results) - len(ratings) - len(failures),
        "judge_failures": len(failures),
        "judge_failure_reasons": dict(sorted(Counter(failures).items())),
        "judge_n": len(results),
    }
