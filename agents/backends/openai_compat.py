"""OpenAI-compatible chat-completions backend (stdlib `urllib`, no SDK).

Works against api.openai.com and any server speaking ``POST {base_url}/chat/completions``
(vLLM, llama.cpp server, Ollama's /v1, LM Studio, ...).

Configuration (argument, else environment variable, else default):
    base_url  OPENAI_BASE_URL   "https://api.openai.com/v1"
    api_key   OPENAI_API_KEY    none (no Authorization header)
    model     OPENAI_MODEL      "gpt-4o-mini"

Behaviour, as tested against a loopback server (tests/test_agents_openai.py, tests/test_cli_failures.py):
- 200 with ``choices[0].message.content``: a `ChatResponse`; tokens from ``usage.prompt_tokens`` /
  ``usage.completion_tokens``, or counted with offline cl100k_base when the server sends no usage
  (``usage_estimated=True``).
- 429 and 5xx: retried up to `max_retries` times; the wait is the server's ``Retry-After``
  (seconds or an HTTP date) when present, else ``backoff_s * 2**attempt``, capped at
  `max_backoff_s`. When retries run out: `BackendError` (with ``.status``).
- a timeout (`timeout_s` per attempt: for connecting, for each read, and for the whole body), a refused
  connection or a connection dropped mid-answer: retried the same way; when retries run out:
  `BackendTimeout` / `BackendError`.
- other 4xx: `BackendError` at once (no retry), with the start of the server's message.
- a malformed 200 (not JSON, no choices, no message) or an answer that is not HTTP: `BackendError` at once.
- inside `agents.backends.request_deadline(at)` (the runtime sets it from `Budgets.max_wall_s`): no
  attempt and no wait outlasts `at`; a request still in flight then is cut off with `BackendTimeout`
  (``kind == "deadline"``).
- a `base_url` that is not an http(s) URL: `ValueError` when the backend is made.
Every `BackendError` has ``.kind``, ``.url`` and ``.attempts`` (see `agents.backends.base.BackendError`).
"""
from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from briefing.options import check_int, check_number
from agents.backends.base import BackendError, BackendTimeout, ChatBackend, ChatResponse, time_left


@dataclass
class OpenAIChatBackend(ChatBackend):
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    temperature: float | None = 0.0
    max_tokens: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    name: str = "openai"

    def __post_init__(self) -> None:
        for name, strict in (("timeout_s", True), ("backoff_s", False), ("max_backoff_s", False)):
            check_number("OpenAIChatBackend", name, getattr(self, name), low=0, low_open=strict, error=ValueError)
        check_int("OpenAIChatBackend", "max_retries", self.max_retries, low=0, error=ValueError)
        self.base_url = (self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = self.api_key if self.api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.model = self.model or os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"
        check_url(self.base_url, "OpenAIChatBackend: base_url")

    # -- public -------------------------------------------------------------------------------
    def complete(self, messages: list[dict[str, str]], **overrides: Any) -> ChatResponse:
        body: dict[str, Any] = {"model": self.model, "messages": messages, **self.extra_body}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(overrides)
        t0 = time.monotonic()
        for attempt in range(self.max_retries + 1):
            left = time_left()
            if left is not None and left <= 0:
                raise self._cut_off(t0, attempt)
            timeout = self.timeout_s if left is None else min(self.timeout_s, left)
            try:
                payload = self._post(body, timeout)
            except BackendError as err:
                err.attempts = attempt + 1
                left = time_left()
                if left is not None and left <= 0.01 and err.kind == "timeout":
                    raise self._cut_off(t0, attempt + 1) from err
                if not err.retryable or attempt == self.max_retries:
                    raise
                wait = self._wait(attempt, err.retry_after)
                if left is not None and wait >= left:   # no time left to try again
                    raise
                self.sleep(wait)
                continue
            resp = self._parse(payload, messages)
            resp.latency_s = time.monotonic() - t0
            resp.attempts = attempt + 1
            return resp
        raise BackendError("no attempt made", url=self.base_url)   # pragma: no cover

    # -- helpers ------------------------------------------------------------------------------
    def _cut_off(self, t0: float, attempts: int) -> BackendTimeout:
        err = BackendTimeout(f"no answer from {self.base_url} before the caller's deadline "
                             f"({time.monotonic() - t0:.1f}s into the request)", kind="deadline", url=self.base_url)
        err.attempts = max(1, attempts)
        return err

    def _post(self, body: dict[str, Any], timeout: float) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.extra_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url
        req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        t0 = time.monotonic()

        def timed_out() -> BackendTimeout:
            return BackendTimeout(f"no answer from {url} within {timeout:g}s", retryable=True, kind="timeout", url=url)

        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                chunks = []
                while chunk := r.read(65536):   # the whole body within `timeout`, not just each read
                    chunks.append(chunk)
                    if time.monotonic() - t0 > timeout:
                        raise timed_out()
                return b"".join(chunks)
        except urllib.error.HTTPError as e:
            detail = " ".join(_read_quietly(e)[:300].split())
            retryable = e.code == 429 or e.code >= 500
            err = BackendError(f"HTTP {e.code} from {url}/chat/completions: {detail or e.reason}", status=e.code,
                               retryable=retryable, url=url)
            err.retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            raise err from None
        except (TimeoutError, socket.timeout) as e:
            raise timed_out() from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise timed_out() from e
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            raise BackendError(f"cannot reach {url}: {reason}", retryable=True, kind="unreachable", url=url) from e
        except ConnectionError as e:   # RemoteDisconnected (also a BadStatusLine), a reset: the server went away
            raise BackendError(f"{url} closed the connection without an answer ({type(e).__name__}: {e})",
                               retryable=True, kind="unreachable", url=url) from e
        except http.client.IncompleteRead as e:
            raise BackendError(f"the connection to {url} closed mid-answer ({len(e.partial)} bytes read)",
                               retryable=True, kind="unreachable", url=url) from e
        except http.client.HTTPException as e:   # BadStatusLine and the like: not an HTTP server
            raise BackendError(f"{url} did not answer in HTTP ({type(e).__name__}: {str(e)[:120]!r})",
                               kind="protocol", url=url) from e
        except OSError as e:
            raise BackendError(f"connection error with {url}: {e}", retryable=True, kind="unreachable",
                               url=url) from e

    def _parse(self, payload: bytes, messages: list[dict[str, str]]) -> ChatResponse:
        try:
            data = json.loads(payload)
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            if not isinstance(text, str):   # content parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise BackendError(f"malformed response from {self.base_url}/chat/completions (not a chat completion): "
                               f"{payload[:200]!r}", kind="malformed", url=self.base_url) from e
        usage = data.get("usage") or {}
        inp, out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        estimated = not isinstance(inp, int) or not isinstance(out, int)
        if estimated:
            inp = sum(self.count_tokens(m.get("content") or "") + 4 for m in messages)
            out = self.count_tokens(text)
        return ChatResponse(text=text, input_tokens=inp, output_tokens=out, usage_estimated=estimated,
                            model=str(data.get("model") or self.model), finish_reason=choice.get("finish_reason"))

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self.backoff_s * (2 ** attempt)
        return max(0.0, min(wait, self.max_backoff_s))


def check_url(url: str, what: str = "base_url") -> str:
    """`url` when it is an http(s) URL with a host and a valid port; else ValueError naming `what`."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port   # raises ValueError for a port out of range or not a number
    except ValueError as e:
        raise ValueError(f"{what} {url!r} is not a valid URL ({e}); expected e.g. http://127.0.0.1:8080/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an http:// or https:// URL with a host; expected e.g. "
                         "http://127.0.0.1:8080/v1")
    return url


def _read_quietly(e: urllib.error.HTTPError) -> str:
    try:
        return e.read().decode("utf-8", "replace")
    except Exception:
        return ""


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None
