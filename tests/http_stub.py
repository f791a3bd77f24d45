"""A scripted OpenAI-style chat server on 127.0.0.1 for client and judge tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the stub answers: ``body`` is sent as JSON unless it is ``str``/``bytes``."""

    status: int = 200
    body: Any = None
    delay_s: float = 0.0


def chat(content: Any) -> dict[str, Any]:
    """An OpenAI chat-completions body whose first choice says ``content``."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


@dataclass
class Stub:
    """A running server: ``url`` to point a client at, plus what it saw."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    max_in_flight: int = 0


Script = Callable[[int, dict[str, Any]], Reply]


@contextmanager
def serve(script: Script) -> Iterator[Stub]:
    """Serve ``script(i, request_json)`` for the i-th POST (from 0) until the block exits."""
    lock = threading.Lock()
    in_flight = 0
    stub = Stub(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal in_flight
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                index = len(stub.requests)
                stub.requests.append(body)
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, in_flight)
            try:
                if self.path == "/v1/chat/completions":
                    reply = script(index, body)
                else:
                    reply = Reply(404, {"error": f"no route {self.path}"})
                time.sleep(reply.delay_s)
                data = reply.body
                if not isinstance(data, str | bytes):
                    data = json.dumps(data)
                if isinstance(data, str):
                    data = data.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)
            finally:
                with lock:
                    in_flight -= 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
