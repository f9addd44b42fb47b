"""OpenAIChatBackend against a real HTTP server on loopback speaking chat-completions."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents import BackendError, BackendTimeout, LLMPolicy, OpenAIChatBackend
from rlm import RLM
from tests.fakes import FakeWorker, fake_factory


class Server:
    """Replies from a script: each entry is (status, body: dict | str, headers, delay_s)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, dict, float]] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload, headers, delay = (server.script.pop(0) if server.script
                                                   else (200, _ok("default"), {}, 0))
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, str) else json.dumps(payload)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _ok(text: str, usage: bool = True) -> dict:
    out = {"id": "x", "model": "test-model", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage:
        out["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return out


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def backend(server, **kw):
    sleeps: list[float] = []
    kw.setdefault("max_retries", 2)
    b = OpenAIChatBackend(base_url=server.url, api_key="sk-test", model="test-model", sleep=sleeps.append, **kw)
    return b, sleeps


MSGS = [{"role": "user", "content": "hello there"}]


def test_success_reads_text_and_usage(server):
    server.script.append((200, _ok("hi!"), {}, 0))
    b, sleeps = backend(server)
    r = b.complete(MSGS)
    assert (r.text, r.input_tokens, r.output_tokens, r.usage_estimated, r.attempts) == ("hi!", 11, 3, False, 1)
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "test-model" and req["body"]["messages"] == MSGS
    assert sleeps == []


def test_missing_usage_is_counted_offline(server):
    server.script.append((200, _ok("four words right here", usage=False), {}, 0))
    r = backend(server)[0].complete(MSGS)
    assert r.usage_estimated and r.output_tokens == 4 and r.input_tokens > 0


def test_429_then_success_honours_retry_after(server):
    server.script += [(429, {"error": {"message": "slow down"}}, {"Retry-After": "2"}, 0),
                      (503, "unavailable", {}, 0),
                      (200, _ok("finally"), {}, 0)]
    b, sleeps = backend(server, backoff_s=0.5)
    r = b.complete(MSGS)
    assert r.text == "finally" and r.attempts == 3
    assert sleeps == [2.0, 1.0]      # Retry-After, then backoff_s * 2**1


def test_retries_run_out(server):
    server.script += [(500, "boom", {}, 0)] * 3
    b, sleeps = backend(server, max_retries=2)
    with pytest.raises(BackendError) as exc:
        b.complete(MSGS)
    assert exc.value.status == 500 and len(sleeps) == 2


def test_client_error_is_not_retried(server):
    server.script.append((401, {"error": {"message": "bad key"}}, {}, 0))
    b, sleeps = backend(server)
    with pytest.raises(BackendError, match="401.*bad key"):
        b.complete(MSGS)
    assert sleeps == [] and len(server.requests) == 1


def test_timeout_is_retried_then_raised(server):
    server.script += [(200, _ok("late"), {}, 1.0), (200, _ok("late"), {}, 1.0)]
    b, sleeps = backend(server, timeout_s=0.2, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(BackendTimeout):
        b.complete(MSGS)
    assert time.monotonic() - t0 < 1.5 and len(sleeps) == 1


def test_timeout_then_success(server):
    server.script += [(200, _ok("late"), {}, 1.0), (200, _ok("on time"), {}, 0)]
    b, _ = backend(server, timeout_s=0.3, max_retries=1)
    assert b.complete(MSGS).text == "on time"


@pytest.mark.parametrize("payload", ["not json at all", {"choices": []}, {"nothing": 1}, {"choices": [{"text": "x"}]}])
def test_malformed_response_raises_without_retry(server, payload):
    server.script.append((200, payload, {}, 0))
    b, sleeps = backend(server)
    with pytest.raises(BackendError, match="malformed"):
        b.complete(MSGS)
    assert sleeps == [] and len(server.requests) == 1


def test_env_configuration(monkeypatch, server):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    b = OpenAIChatBackend()
    assert (b.base_url, b.api_key, b.model) == (server.url, "sk-env", "env-model")
    b.complete(MSGS)
    assert server.requests[0]["auth"] == "Bearer sk-env" and server.requests[0]["body"]["model"] == "env-model"


def test_unreachable_server_raises(monkeypatch):
    b = OpenAIChatBackend(base_url="http://127.0.0.1:9/v1", api_key="", model="m", max_retries=1, sleep=lambda s: None,
                          timeout_s=1.0)
    with pytest.raises(BackendError):
        b.complete(MSGS)


def test_llm_policy_drives_a_run_through_the_server(server):
    server.script += [
        (200, _ok("Let me look.\n```repl\nprint(len(context))\nnote = worker('what is it?')\n```"), {}, 0),
        (200, _ok("The context has 11 characters.\nFINAL_VAR(note)"), {}, 0),
    ]
    b, _ = backend(server)
    res = RLM(LLMPolicy(b), FakeWorker(), sandbox_factory=fake_factory).run("How long?", "hello world")
    assert res.stop_reason == "final" and res.answer == "answer to: what is it?"
    assert res.usage["orchestrator"].input_tokens == 22 and res.usage["orchestrator"].output_tokens == 6
    second = server.requests[1]["body"]["messages"]
    assert second[0]["role"] == "system" and "worker(query" in second[0]["content"]
    assert "How long?" in second[1]["content"] and "11 total characters" in second[1]["content"]
    assert any("REPL output:\n11" in m["content"] for m in second if m["role"] == "user")


def test_request_deadline_cuts_a_request_in_flight(server):
    from agents.backends import request_deadline

    server.script.append((200, _ok("late"), {}, 3.0))
    b, sleeps = backend(server, timeout_s=60.0, max_retries=4)
    t0 = time.monotonic()
    with request_deadline(time.monotonic() + 0.5), pytest.raises(BackendTimeout) as exc:
        b.complete(MSGS)
    assert time.monotonic() - t0 < 2.0 and exc.value.kind == "deadline" and sleeps == []
    assert "before the caller's deadline" in str(exc.value) and len(server.requests) == 1


def test_request_deadline_leaves_no_time_for_a_retry_wait(server):
    from agents.backends import request_deadline

    server.script += [(503, "busy", {}, 0)] * 3
    b, sleeps = backend(server, backoff_s=5.0, max_retries=2)
    with request_deadline(time.monotonic() + 1.0), pytest.raises(BackendError) as exc:
        b.complete(MSGS)
    assert exc.value.status == 503 and sleeps == [] and len(server.requests) == 1   # a 5 s wait would outlast it


def test_nested_deadlines_keep_the_earlier():
    from agents.backends import request_deadline
    from agents.backends.base import deadline

    assert deadline() is None
    with request_deadline(100.0):
        with request_deadline(200.0):
            assert deadline() == 100.0
        with request_deadline(50.0):
            assert deadline() == 50.0
        with request_deadline(None):
            assert deadline() == 100.0
    assert deadline() is None


def test_errors_say_what_kind_and_how_many_attempts():
    from tests.chat_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIChatBackend(base_url=url, model="m", max_retries=1, sleep=lambda s: None)
    with pytest.raises(BackendError) as exc:
        b.complete(MSGS)
    assert exc.value.kind == "unreachable" and exc.value.url == url and exc.value.attempts == 2
    assert str(exc.value).endswith("(2 attempts)") and "Connection refused" in str(exc.value)


@pytest.mark.parametrize("url", ["foo", "localhost:8080/v1", "ftp://host/v1", "http://127.0.0.1:99999/v1",
                                 "http:///v1"])
def test_a_base_url_that_is_not_http_is_refused(url):
    with pytest.raises(ValueError, match="base_url"):
        OpenAIChatBackend(base_url=url)
