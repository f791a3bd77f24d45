"""ChatClient against a real HTTP server on 127.0.0.1: retries, errors, cache, concurrency."""

import json

import pytest
from http_stub import Reply, chat, serve

from ichigo_lib.llm_client import (
    ChatClient,
    ChatEndpoint,
    EndpointError,
    EndpointRefused,
    endpoint_from,
)

HELLO = [{"role": "user", "content": "hello"}]


def client_for(url, cache_dir=None, **options):
    options = {"max_retries": 2, "backoff_s": 0.01, "timeout_s": 2.0, **options}
    return ChatClient(ChatEndpoint(url=url, model="judge-7b", **options), cache_dir)


def test_success_sends_openai_request_and_returns_content(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with serve(lambda i, req: Reply(body=chat("hi there"))) as stub:
        client = client_for(stub.url, temperature=0.3, max_tokens=7)
        assert client.complete(HELLO) == "hi there"
    assert stub.requests == [
        {"model": "judge-7b", "messages": HELLO, "temperature": 0.3, "max_tokens": 7}
    ]
    assert "authorization" not in stub.headers[0]
    assert client.requests == 1 and client.cache_hits == 0


def test_authorization_header_from_env_var(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    with serve(lambda i, req: Reply(body=chat("ok"))) as stub:
        client_for(stub.url, api_key_env="MY_JUDGE_KEY").complete(HELLO)
    assert stub.headers[0]["authorization"] == "Bearer sk-test"


def test_server_error_then_success_is_retried():
    def script(i, req):
        return Reply(500, {"error": "boom"}) if i == 0 else Reply(body=chat("second try"))

    with serve(script) as stub:
        client = client_for(stub.url)
        assert client.complete(HELLO) == "second try"
    assert len(stub.requests) == 2 and client.requests == 2


def test_persistent_503_fails_after_max_retries_naming_url_and_status():
    with serve(lambda i, req: Reply(503, {"error": "overloaded"})) as stub:
        client = client_for(stub.url, max_retries=2)
        with pytest.raises(EndpointError) as err:
            client.complete(HELLO)
    assert len(stub.requests) == 3
    message = str(err.value)
    assert f"{stub.url}/chat/completions" in message
    assert "3 attempt(s)" in message and "HTTP 503" in message and "overloaded" in message


def test_rate_limit_429_is_retried():
    def script(i, req):
        return Reply(429, "slow down") if i < 2 else Reply(body=chat("ok"))

    with serve(script) as stub:
        assert client_for(stub.url, max_retries=2).complete(HELLO) == "ok"
    assert len(stub.requests) == 3


def test_client_error_400_is_not_retried():
    with serve(lambda i, req: Reply(400, {"error": "unknown model judge-7b"})) as stub:
        with pytest.raises(EndpointError, match=r"HTTP 400: .*unknown model judge-7b"):
            client_for(stub.url, max_retries=3).complete(HELLO)
    assert len(stub.requests) == 1


def test_timeout_is_retried_then_reported():
    with serve(lambda i, req: Reply(body=chat("late"), delay_s=0.6)) as stub:
        client = client_for(stub.url, timeout_s=0.2, max_retries=1)
        with pytest.raises(EndpointError, match=r"2 attempt\(s\): timed out"):
            client.complete(HELLO)
    assert len(stub.requests) == 2


def test_connection_refused_is_reported():
    with serve(lambda i, req: Reply(body=chat("never"))) as stub:
        url = stub.url
    with pytest.raises(EndpointError, match="connection failed"):
        client_for(url, max_retries=1).complete(HELLO)


@pytest.mark.parametrize(
    "body, detail",
    [
        ("<html>502 bad gateway</html>", "<html>502 bad gateway</html>"),
        ({"object": "chat.completion"}, "no choices"),
        ({"choices": []}, "no choices"),
        (chat(None), "not a string"),
    ],
)
def test_malformed_replies_fail_after_retries_quoting_the_body(body, detail):
    with serve(lambda i, req: Reply(body=body)) as stub:
        with pytest.raises(EndpointError, match="malformed reply") as err:
            client_for(stub.url, max_retries=1).complete(HELLO)
    assert detail in str(err.value)
    assert len(stub.requests) == 2


def test_long_bodies_are_excerpted():
    with serve(lambda i, req: Reply(400, "x" * 5000)) as stub:
        with pytest.raises(EndpointError) as err:
            client_for(stub.url).complete(HELLO)
    assert len(str(err.value)) < 400 and str(err.value).endswith("...'")


def test_cache_hit_makes_no_request_and_survives_a_new_client(tmp_path):
    with serve(lambda i, req: Reply(body=chat(f"reply {i}"))) as stub:
        first = client_for(stub.url, cache_dir=tmp_path)
        assert first.complete(HELLO) == "reply 0"
        assert first.complete(HELLO) == "reply 0"
        second = client_for(stub.url, cache_dir=tmp_path)
        assert second.complete(HELLO) == "reply 0"
        other = [{"role": "user", "content": "something else"}]
        assert second.complete(other) == "reply 1"
        hotter = client_for(stub.url, cache_dir=tmp_path, temperature=0.7)
        assert hotter.complete(HELLO) == "reply 2"
    assert len(stub.requests) == 3
    assert (first.requests, first.cache_hits) == (1, 1)
    assert (second.requests, second.cache_hits) == (1, 1)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3 and all(f.suffix == ".json" for f in files)
    assert {json.loads(f.read_text())["content"] for f in files} == {
        "reply 0",
        "reply 1",
        "reply 2",
    }


def test_failed_requests_are_not_cached(tmp_path):
    with serve(lambda i, req: Reply(400, "bad")) as stub:
        with pytest.raises(EndpointError):
            client_for(stub.url, cache_dir=tmp_path).complete(HELLO)
    assert list(tmp_path.iterdir()) == []


def test_complete_many_preserves_order_and_bounds_concurrency():
    def script(i, req):
        n = int(req["messages"][0]["content"])
        return Reply(body=chat(f"answer {n}"), delay_s=0.02 * (n % 4) + 0.05)

    conversations = [[{"role": "user", "content": str(n)}] for n in range(10)]
    with serve(script) as stub:
        replies = client_for(stub.url, max_concurrency=3).complete_many(conversations)
    assert replies == [f"answer {n}" for n in range(10)]
    assert stub.max_in_flight == 3
    assert client_for("http://127.0.0.1:9/v1").complete_many([]) == []


def test_rejected_replies_are_retried_and_never_cached(tmp_path):
    def accept(reply):
        return None if reply.endswith("ok") else "not ok"

    with serve(lambda i, req: Reply(body=chat("ok" if i == 1 else f"bad {i}"))) as stub:
        client = client_for(stub.url, cache_dir=tmp_path, max_retries=1)
        assert client.complete(HELLO, accept) == "ok" and client.requests == 2
        (cached,) = tmp_path.iterdir()
        cached.write_text(json.dumps({"content": "stale"}))  # a cached reply it now rejects
        with pytest.raises(EndpointError, match="not ok: 'bad 3'") as err:
            client.complete(HELLO, accept)
    assert (err.value.reason, err.value.reply) == ("not ok", "bad 3")
    assert json.loads(cached.read_text())["content"] == "stale"  # nothing rejected is written


def test_complete_many_can_return_failures_in_place():
    def script(i, req):
        n = int(req["messages"][0]["content"])
        return Reply(503, {"error": "busy"}) if n == 1 else Reply(body=chat(f"answer {n}"))

    conversations = [[{"role": "user", "content": str(n)}] for n in range(3)]
    with serve(script) as stub:
        client = client_for(stub.url, max_retries=1, max_concurrency=1)
        out = client.complete_many(conversations, return_errors=True)
        with pytest.raises(EndpointError, match="HTTP 503"):
            client.complete_many(conversations)
    assert out[0] == "answer 0" and out[2] == "answer 2"
    assert isinstance(out[1], EndpointError) and out[1].reason == "HTTP 503"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refusals_of_every_request_are_raised_even_when_returning_errors(status):
    with serve(lambda i, req: Reply(status, {"error": "no such model"})) as stub:
        with pytest.raises(EndpointRefused, match=f"HTTP {status}"):
            client_for(stub.url).complete_many([HELLO], return_errors=True)
    assert len(stub.requests) == 1


def test_endpoint_from_explains_how_to_configure(monkeypatch):
    monkeypatch.delenv("ICHIGO_JUDGE_URL", raising=False)
    monkeypatch.delenv("ICHIGO_JUDGE_MODEL", raising=False)
    with pytest.raises(EndpointError, match="missing url and model") as err:
        endpoint_from(None, "  ")
    for hint in ("--judge-url", "ICHIGO_JUDGE_URL", "eval.judge.url"):
        assert hint in str(err.value)
    with pytest.raises(EndpointError, match="missing model"):
        endpoint_from("http://127.0.0.1:8000/v1", "")


def test_endpoint_from_reads_env_and_passes_options(monkeypatch):
    monkeypatch.setenv("ICHIGO_JUDGE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("ICHIGO_JUDGE_MODEL", "from-env")
    ep = endpoint_from("", None, max_tokens=64)
    assert (ep.url, ep.model, ep.max_tokens) == ("http://127.0.0.1:8000/v1", "from-env", 64)
    assert endpoint_from("https://api.example/v1/", "given").completions_url == (
        "https://api.example/v1/chat/completions"
    )


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"url": "127.0.0.1:8000/v1"}, "must start with http"),
        ({"url": "http://h/v1/chat/completions"}, "without /chat/completions"),
        ({"model": " "}, "model must not be empty"),
        ({"timeout_s": 0}, "timeout_s must be positive"),
        ({"max_concurrency": 0}, "max_concurrency must be positive"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_endpoint_rejects_bad_settings(fields, match):
    with pytest.raises(EndpointError, match=match):
        ChatEndpoint(**{"url": "http://127.0.0.1:8000/v1", "model": "m", **fields})
