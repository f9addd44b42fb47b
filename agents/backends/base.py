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
    name: str = "chat"
    model: str = ""

    @abstractmethod
    def complete(self, messages: list[dict[str, str]], **overrides: Any) -> ChatResponse:
        ...

    def count_tokens(self, text: str) -> int:
        from agents.tokens import TiktokenCounter

        return TiktokenCounter().count(text)
