"""AudioBench-style judging of answers to spoken instructions: a 0-5 rating per answer.

``LLMJudge`` asks an LLM to rate each answer against the reference with an open-ended rubric
in the spirit of AudioBench's; ``ReferenceMatchJudge`` is a deterministic stand-in for the toy
profiles. Both return the judge's raw reply ending in ``Rating: N`` and its parsed rating.

AudioBench's rule: an answer whose judgement fails scores 0 and still counts. A judge call that
fails after its retries (timeout, 5xx, malformed JSON) is a *judge failure* recorded with its
reason; a reply without a usable rating (retried too) is a *parse failure*; neither stops the
run, and ``summarise`` counts both.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
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

# "Rating" then separators/markdown ("**Rating:** [[4]]"), an integer or decimal, maybe "/5".
_RATING = re.compile(r"\brating\b[\s*_:=\[(\"']*(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?", re.I)


NO_RATING = "no rating"


@dataclass(frozen=True)
class JudgeResult:
    """One judged answer: the rating (None when there is no usable one), the judge's reply and,
    for a judge call that failed, ``failure``: its kind (``timeout``, ``HTTP 500``, ...), with
    the error's message as ``raw``."""

    rating: int | None
    raw: str
    failure: str | None = None

    @property
    def score(self) -> int:
        """The rating, 0 when there is none (AudioBench's rule)."""
        return 0 if self.rating is None else self.rating


class Judge(Protocol):
    """Rates answers 0-5 against references; ``name`` goes into reports."""

    name: str

    def score(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]
    ) -> list[JudgeResult]: ...


def judge_messages(question: str, answer: str, reference: str) -> list[dict[str, str]]:
    """The chat request that asks a judge to rate ``answer``."""
    prompt = RUBRIC.format(question=question, reference=reference, answer=answer)
    return [{"role": "user", "content": prompt}]


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


def _rating_problem(reply: str) -> str | None:
    """``accept`` for the judge's client: replies without a usable rating are retried."""
    return None if parse_rating(reply) is not None else NO_RATING


def _check_lengths(questions: Sequence[str], answers: Sequence[str], refs: Sequence[str]) -> None:
    if not len(questions) == len(answers) == len(refs):
        raise ValueError(
            f"need one answer and one reference per question, got {len(questions)} questions, "
            f"{len(answers)} answers, {len(refs)} references"
        )


class LLMJudge:
    """An LLM behind an OpenAI-compatible endpoint, prompted with ``RUBRIC``."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.name = f"llm:{client.endpoint.model}"

    def score(
        self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]
    ) -> list[JudgeResult]:
        _check_lengths(questions, answers, references)
        requests = [
            judge_messages(*item) for item in zip(questions, answers, references, strict=True)
        ]
        replies = self.client.complete_many(requests, _rating_problem, return_errors=True)
        return [self._result(reply) for reply in replies]

    @staticmethod
    def _result(reply: str | EndpointError) -> JudgeResult:
        if not isinstance(reply, EndpointError):
            return JudgeResult(parse_rating(reply), reply)
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
