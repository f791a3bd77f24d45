"""Judging: rating parsing, the reference-match judge, the LLM judge over HTTP, summaries."""

import pytest
from http_stub import Reply, chat, serve

from ichigo_lib.evaluate.judge import (
    RUBRIC,
    JudgeResult,
    LLMJudge,
    ReferenceMatchJudge,
    judge_messages,
    parse_rating,
    summarise,
)
from ichigo_lib.llm_client import ChatClient, ChatEndpoint, EndpointRefused


@pytest.mark.parametrize(
    "reply, rating",
    [
        ("The answer matches.\nRating: 4", 4),
        ("rating:4", 4),
        ("**Rating:** 5", 5),
        ("Rating: 3/5", 3),
        ("Rating: 3 / 5.", 3),
        ("Rating: [[2]]", 2),
        ("RATING = (0)", 0),
        ("Rating: 4.", 4),
        ("I first thought Rating: 2, but on reflection... Rating: 5", 5),
        ("Explanation: close enough, I would say 4 out of 5.", None),
        ("", None),
        ("Rating: 7", None),
        ("Rating: -1", None),
        ("Rating: 45", None),
        ("Rating: 4.5", None),
        ("Rating: 8/10", None),
        ("Rating: N/A", None),
        ("Ratings are subjective; my rating: 1", 1),
        ("Overrating: 3", None),
    ],
)
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


def test_rubric_names_inputs_and_demands_the_rating_line():
    [message] = judge_messages("What is 2+2?", "five", "four")
    assert message["role"] == "user"
    text = message["content"]
    assert text.index("What is 2+2?") < text.index("four") < text.index("five")
    assert text.rstrip().endswith('"Rating: N", where N is an integer from 0 to 5.')
    assert all(f"\n{level}: " in RUBRIC for level in range(6))


@pytest.mark.parametrize(
    "answer, reference, rating",
    [
        ("Paris.", "Paris", 5),
        ("The capital is Paris!", "paris", 5),  # 3 extra words allowed
        ("I think the capital is Paris", "Paris", 1),  # 5 extra: F1 = 2/7
        ("the red fox jumps", "The red fox jumps.", 5),
        ("red the fox jumps", "the red fox jumps", 4),  # all words, wrong order: capped at 4
        ("the red dog", "the red fox jumps", 3),  # F1 = 4/7 -> 2.86
        ("the cat", "the red fox jumps", 2),  # F1 = 1/3 -> 1.67
        ("blue whale", "the red fox jumps", 0),
        ("", "Paris", 0),
        ("?!", "Paris", 0),
    ],
)
def test_reference_match_ratings(answer, reference, rating):
    [result] = ReferenceMatchJudge().score(["q"], [answer], [reference])
    assert result == JudgeResult(rating, f"Rating: {rating}")
    assert parse_rating(result.raw) == rating


def test_reference_match_extra_word_allowance_is_configurable():
    assert (
        ReferenceMatchJudge(max_extra_words=0).rate("Paris it is", "Paris") == 3
    )  # F1 = 1/2, 2.5 rounds up
    assert ReferenceMatchJudge(max_extra_words=5).rate("I think the capital is Paris", "Paris") == 5


def test_reference_match_rejects_empty_reference_and_length_mismatch():
    judge = ReferenceMatchJudge()
    with pytest.raises(ValueError, match="reference 1 has no words"):
        judge.score(["q1", "q2"], ["a", "b"], ["a", "..."])
    with pytest.raises(ValueError, match="2 questions, 1 answers, 2 references"):
        judge.score(["q1", "q2"], ["a"], ["a", "b"])


def test_llm_judge_rates_each_answer_in_order_over_http():
    replies = {
        "Paris": "Matches the reference.\n**Rating:** 5",
        "Lyon": "Wrong city.\nRating: 1",
        "dunno": "The model does not answer.",
    }

    def script(i, req):
        prompt = req["messages"][0]["content"]
        answer = prompt.split("[Model Answer]\n")[1].split("\n")[0]
        return Reply(body=chat(replies[answer]), delay_s=0.01 * (3 - i))

    with serve(script) as stub:
        endpoint = ChatEndpoint(url=stub.url, model="judge-70b", backoff_s=0.01, max_retries=1)
        judge = LLMJudge(ChatClient(endpoint))
        q = "What is the capital of France?"
        results = judge.score([q] * 3, ["Paris", "Lyon", "dunno"], ["Paris"] * 3)
    assert judge.name == "llm:judge-70b"
    assert [r.rating for r in results] == [5, 1, None]
    assert [r.raw for r in results] == list(replies.values())
    assert len(stub.requests) == 4  # the reply without a rating was asked twice
    assert all(req["model"] == "judge-70b" and req["temperature"] == 0.0 for req in stub.requests)
    assert summarise(results) == {
        "judge_score_mean": 2.0,  # the unparsed reply scores 0 and counts (AudioBench)
        "judge_score_mean_rated": 3.0,
        "judge_rated": 2,
        "judge_parse_failures": 1,
        "judge_failures": 0,
        "judge_failure_reasons": {},
        "judge_n": 3,
    }


def test_failed_judge_calls_score_zero_with_their_reason_and_the_run_goes_on(tmp_path):
    def script(i, req):
        answer = req["messages"][0]["content"].split("[Model Answer]\n")[1].split("\n")[0]
        return {
            "good": Reply(body=chat("Fine.\nRating: 4")),
            "slow": Reply(body=chat("Rating: 5"), delay_s=0.5),
            "boom": Reply(500, {"error": "overloaded"}),
            "junk": Reply(body="<html>gateway</html>"),
            "shape": Reply(body={"object": "chat.completion"}),
        }[answer]

    answers = ["good", "slow", "boom", "junk", "shape"]
    with serve(script) as stub:
        endpoint = ChatEndpoint(url=stub.url, model="j", backoff_s=0.0, timeout_s=0.2)
        results = LLMJudge(ChatClient(endpoint, tmp_path)).score(["q"] * 5, answers, ["r"] * 5)
    assert [r.rating for r in results] == [4, None, None, None, None]
    assert [r.failure for r in results] == [
        None,
        "timeout",
        "HTTP 500",
        "malformed reply",
        "malformed reply",
    ]
    assert "HTTP 500" in results[2].raw and "overloaded" in results[2].raw
    summary = summarise(results)
    assert summary["judge_score_mean"] == 0.8 and summary["judge_failures"] == 4
    assert summary["judge_failure_reasons"] == {"HTTP 500": 1, "malformed reply": 2, "timeout": 1}
    assert summary["judge_rated"] + summary["judge_parse_failures"] + 4 == summary["judge_n"]
    assert len(list(tmp_path.iterdir())) == 1  # only the good rating is cached


def test_a_judge_that_refuses_every_request_stops_the_run():
    with serve(lambda i, req: Reply(401, {"error": "invalid api key"})) as stub:
        judge = LLMJudge(ChatClient(ChatEndpoint(url=stub.url, model="j", backoff_s=0.0)))
        with pytest.raises(EndpointRefused, match="HTTP 401.*invalid api key"):
            judge.score(["q"], ["a"], ["r"])


def test_summarise_without_parsed_ratings():
    assert summarise([JudgeResult(None, "?")]) == {
        "judge_score_mean": 0.0,
        "judge_score_mean_rated": None,
        "judge_rated": 0,
        "judge_parse_failures": 1,
        "judge_failures": 0,
        "judge_failure_reasons": {},
        "judge_n": 1,
    }
    empty = summarise([])
    assert empty["judge_score_mean"] is None and empty["judge_n"] == 0
