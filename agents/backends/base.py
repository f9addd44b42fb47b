"""Chat backend interface: a list of {"role", "content"} messages in, one completion out."""
from __future__ import annotations

from abc import ABC, abstractmethod
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
    """The backend could not produce a completion (after retries where retrying makes sense)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class BackendTimeout(BackendError):
    """Every attempt timed out."""


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
