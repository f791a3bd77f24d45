"""A small client for OpenAI-compatible chat-completions endpoints (vLLM, hosted APIs).

Used to generate refusal phrasings and as the LLM judge. Stdlib only (``urllib``): retries with
exponential backoff on timeouts, connection errors, HTTP 429 and 5xx, malformed replies and
replies the caller rejects (``accept``); other 4xx fail at once. Replies can be cached on disk,
one JSON file per request (only accepted ones), so re-running a notebook costs nothing, gives
the same text and asks again only for what failed. ``complete_many(..., return_errors=True)``
returns each failed request's ``EndpointError`` in its place instead of raising, except
``EndpointRefused`` (401/403/404: every request would fail the same way).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichigo_lib.errors import IchigoError

URL_ENV = "ICHIGO_JUDGE_URL"
MODEL_ENV = "ICHIGO_JUDGE_MODEL"
JUDGE_CONFIGURE = (
    "set eval.judge.url and eval.judge.model in the profile, pass --judge-url and --judge-model"
)
_EXCERPT_CHARS = 200


class EndpointError(IchigoError, RuntimeError):
    """An endpoint that is not configured, unreachable, or answers something unusable.

    ``reason`` is a short kind for reports (``timeout``, ``HTTP 500``, ``malformed reply``, or the
    caller's own, e.g. ``no rating``); ``reply`` is the last reply's text when one came back but
    was rejected.
    """

    def __init__(self, message: str, reason: str = "error", reply: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reply = reply


class EndpointRefused(EndpointError):
    """HTTP 401, 403 or 404: wrong key, URL or model, so every request would fail alike."""


class _Retryable(Exception):
    """A failed attempt worth trying again (kept as the cause if the retries run out)."""

    def __init__(self, message: str, reason: str, reply: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reply = reply


Accept = Callable[[str], str | None]
"""Checks a reply: ``None`` to accept it, else the reason it is rejected (then retried)."""


@dataclass(frozen=True)
class ChatEndpoint:
    """Where and how to ask: ``url`` is the base URL (``http://127.0.0.1:8000/v1``).

    ``max_retries`` counts attempts after the first; attempt ``i`` waits ``backoff_s * 2**i``
    seconds before retrying. The API key is read from the env var ``api_key_env`` when set
    (local servers need none).
    """

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    max_concurrency: int = 8
    temperature: float = 0.0
    max_tokens: int = 512
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise EndpointError(f"endpoint url must start with http:// or https://: {self.url!r}")
        if self.url.rstrip("/").endswith("/chat/completions"):
            raise EndpointError(
                f"endpoint url should be the base URL (e.g. http://127.0.0.1:8000/v1), without "
                f"/chat/completions: {self.url!r}"
            )
        if not self.model.strip():
            raise EndpointError("endpoint model must not be empty")
        for name in ("timeout_s", "max_concurrency", "max_tokens"):
            if getattr(self, name) <= 0:
                raise EndpointError(f"endpoint {name} must be positive, got {getattr(self, name)}")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise EndpointError("endpoint max_retries and backoff_s must be >= 0")

    @property
    def completions_url(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


def endpoint_from(
    url: str | None,
    model: str | None,
    *,
    url_env: str = URL_ENV,
    model_env: str = MODEL_ENV,
    configure: str = JUDGE_CONFIGURE,
    **options: Any,
) -> ChatEndpoint:
    """A ``ChatEndpoint``; empty ``url``/``model`` fall back to ``$url_env``/``$model_env``.

    ``options`` are the other ``ChatEndpoint`` fields. Raises ``EndpointError`` saying how to
    configure the endpoint (``configure``, then the variables) when url or model is missing.
    """
    url = (url or "").strip() or os.environ.get(url_env, "").strip()
    model = (model or "").strip() or os.environ.get(model_env, "").strip()
    missing = [name for name, value in (("url", url), ("model", model)) if not value]
    if missing:
        raise EndpointError(
            f"no LLM endpoint configured (missing {' and '.join(missing)}). Point it at any "
            f"OpenAI-compatible server (e.g. vLLM at http://127.0.0.1:8000/v1): {configure}, "
            f"or export {url_env} and {model_env}."
        )
    return ChatEndpoint(url=url, model=model, **options)


def _excerpt(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.strip()
    return repr(text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "...")


def _content(body: bytes) -> str:
    """``choices[0].message.content`` of a reply, or ``_Retryable`` quoting the body."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise _Retryable(
            f"malformed reply (no choices[0].message.content): {_excerpt(body)}",
            "malformed reply",
        ) from err
    if not isinstance(content, str):
        raise _Retryable(
            f"malformed reply (content is not a string): {_excerpt(body)}", "malformed reply"
        )
    return content


class ChatClient:
    """Sends chat requests to ``endpoint``; caches replies in ``cache_dir`` when given.

    ``requests`` counts HTTP attempts (retries included), ``cache_hits`` replies served from
    the cache.
    """

    def __init__(self, endpoint: ChatEndpoint, cache_dir: str | Path | None = None) -> None:
        self.endpoint = endpoint
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.requests = 0
        self.cache_hits = 0
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, Any]], accept: Accept | None = None) -> str:
        """The assistant's reply to ``messages`` (OpenAI format: ``{"role", "content"}``).

        A reply that ``accept`` rejects is retried like a failed request and never cached (a
        cached one it rejects is asked again).
        """
        if not messages:
            raise ValueError("messages must not be empty")
        payload = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": self.endpoint.temperature,
            "max_tokens": self.endpoint.max_tokens,
        }
        cache_file = self._cache_file(payload)
        if cache_file is not None and cache_file.exists():
            content = json.loads(cache_file.read_text())["content"]
            if accept is None or accept(content) is None:
                with self._lock:
                    self.cache_hits += 1
                return content
        content = self._post(json.dumps(payload).encode(), accept)
        if cache_file is not None:
            self._write_cache(cache_file, payload, content)
        return content

    def complete_many(
        self,
        conversations: list[list[dict[str, Any]]],
        accept: Accept | None = None,
        return_errors: bool = False,
    ) -> list[Any]:
        """Replies to each conversation, in order, at most ``max_concurrency`` in flight.

        With ``return_errors`` a request that fails after its retries gives its
        ``EndpointError`` in place of the reply and the others go on; ``EndpointRefused`` is
        still raised.
        """
        if not conversations:
            return []

        def one(messages: list[dict[str, Any]]) -> Any:
            try:
                return self.complete(messages, accept)
            except EndpointRefused:
                raise
            except EndpointError as err:
                if not return_errors:
                    raise
                return err

        from tqdm.auto import tqdm

        workers = min(self.endpoint.max_concurrency, len(conversations))
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(
                total=len(conversations),
                desc=f"requests to {self.endpoint.model}",
                unit="req",
                mininterval=2.0,
                disable=len(conversations) < 2,
            ) as bar,
        ):
            futures = [pool.submit(one, messages) for messages in conversations]
            for future in as_completed(futures):
                future.result()  # raise at once (EndpointRefused) rather than at the end
                bar.update()
            return [future.result() for future in futures]

    def _cache_file(self, payload: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        keyed = {"url": self.endpoint.url.rstrip("/"), **payload}
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f"{key}.json"

    def _write_cache(self, path: Path, payload: dict[str, Any], content: str) -> None:
        record = {"url": self.endpoint.url, "request": payload, "content": content}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def _post(self, data: bytes, accept: Accept | None) -> str:
        ep = self.endpoint
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(ep.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        attempts = ep.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(ep.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.requests += 1
            request = urllib.request.Request(ep.completions_url, data, headers, method="POST")
            try:
                content = self._attempt(request)
                rejected = accept(content) if accept is not None else None
                if rejected is None:
                    return content
                raise _Retryable(f"{rejected}: {_excerpt(content)}", rejected, content)
            except _Retryable as err:
                last = err
        raise EndpointError(
            f"POST {ep.completions_url} failed after {attempts} attempt(s): {last}",
            last.reason,
            last.reply,
        ) from last

    def _attempt(self, request: urllib.request.Request) -> str:
        url = request.full_url
        try:
            with urllib.request.urlopen(request, timeout=self.endpoint.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            message = _excerpt(err.read())
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code}: {message}", f"HTTP {err.code}") from err
            kind = EndpointRefused if err.code in (401, 403, 404) else EndpointError
            raise kind(
                f"POST {url} returned HTTP {err.code}: {message}", f"HTTP {err.code}"
            ) from err
        except (
            TimeoutError,
            ConnectionError,
            urllib.error.URLError,
            http.client.HTTPException,
        ) as err:
            reason = getattr(err, "reason", err)
            timed_out = isinstance(reason, TimeoutError)
            kind = "timed out" if timed_out else "connection failed"
            raise _Retryable(
                f"{kind} ({type(reason).__name__}: {reason})",
                "timeout" if timed_out else "connection failed",
            ) from err
        return _content(body)
