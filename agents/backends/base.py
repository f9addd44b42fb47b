"""Chat backend interface: a list of {"role", "content"} messages in, one completion out."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel


class ChatResponse(BaseModel):
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False   # True when the server sent no usage and we counted ourselves
    model: str = ""
    finish_reason: str | None = None
    latency_s: float = 0.0
    attempts: int = 1


class BackendError(RuntimeError):
    """The backend could not produce a completion (after retries where retrying makes sense).

    status: the HTTP status, if the server sent one. kind: what went wrong, for the message a user reads:
    "unreachable" (no connection), "timeout" (no answer in time), "deadline" (cut off by the caller's
    `request_deadline`), "http" (an error status), "malformed" (a 200 that is not a chat completion),
    "protocol" (not HTTP at all), or "" (other). url: the server. attempts: requests made.
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False, kind: str = "",
                 url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.kind = kind or ("http" if status is not None else "")
        self.url = url
        self.attempts = 1
        self.retry_after: float | None = None

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.attempts} attempts)" if self.attempts > 1 else text


class BackendTimeout(BackendError):
    """Every attempt timed out, or the caller's deadline (`request_deadline`) cut the request off."""


# -- the caller's deadline -------------------------------------------------------------------
_DEADLINE: ContextVar[float | None] = ContextVar("latent_briefing_request_deadline", default=None)


@contextmanager
def request_deadline(at: float | None) -> Iterator[None]:
    """Requests a backend makes inside this block end by `at` (a `time.monotonic()` instant; None: no bound).

    The runtime sets it from the run's wall-time budget around each policy step and worker call, so a hung
    server cannot hold a run past `Budgets.max_wall_s`. Nested blocks keep the earlier of the two instants.
    """
    if at is None:
        yield
        return
    current = _DEADLINE.get()
    token = _DEADLINE.set(at if current is None else min(current, at))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def deadline() -> float | None:
    """The `time.monotonic()` instant requests must end by, or None (see `request_deadline`)."""
    return _DEADLINE.get()


def time_left() -> float | None:
    """Seconds left before the caller's deadline (may be <= 0), or None when there is none."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


class ChatBackend(ABC):
    """A chat model, local or behind an API: what LLM policies and the text/plain workers talk to.

    complete(messages, max_tokens=, temperature=, stop=, ...): one completion (the overrides a backend knows).
    max_context: tokens the model reads at most, or None where only the server knows (then nothing is cut).
    """

    name: str = "chat"
    model: str = ""

    @abstractmethod
    def complete(self, messages: list[dict[str, str]], **overrides: Any) -> ChatResponse:
        ...

    @property
    def max_context(self) -> int | None:
        return None

    def count_tokens(self, text: str) -> int:
        from agents.tokens import TiktokenCounter

        return TiktokenCounter().count(text)

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        """Input tokens of `messages` (default: their contents counted; a local model renders its template)."""
        return sum(self.count_tokens(m["content"]) for m in messages)

    def keep_last_tokens(self, text: str, tokens: int) -> str:
        """The end of `text`, `tokens` tokens long (needed only where `max_context` is known)."""
        raise NotImplementedError(f"{type(self).__name__} sets max_context, so it must implement keep_last_tokens")
