"""Workers: who answers `worker(query)` calls from the orchestrator's REPL."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.workers.base import BriefingStats, CallContext, Worker, WorkerAnswer
from agents.workers.briefed import BriefedWorker
from agents.workers.local import Briefing
from agents.workers.plain import PlainWorker
from agents.workers.prompt import ChatSplit, WorkerPrompt, split_chat_template
from agents.workers.remote import RemoteBriefedWorker, RemoteWorkerError, ServiceUnavailable
from agents.workers.text import TextWorker

if TYPE_CHECKING:
    import briefing

__all__ = ["Briefing", "BriefingStats", "CallContext", "Worker", "WorkerAnswer", "BriefedWorker", "PlainWorker",
           "RemoteBriefedWorker", "RemoteWorkerError", "ServiceUnavailable", "TextWorker", "ChatSplit", "WorkerPrompt",
           "split_chat_template", "make_worker"]


def make_worker(kind: str, lm: briefing.LoadedModel | None = None, **kwargs: Any) -> Worker:
    """'briefed' | 'text' | 'plain' -> a worker on the local model `lm` (None: the embedded default); the text
    and plain workers talk to it through a `LocalChatBackend`."""
    if kind == "briefed":
        return BriefedWorker(lm=lm, **kwargs)
    if kind in ("text", "plain"):
        from agents.backends.local import LocalChatBackend

        worker = TextWorker if kind == "text" else PlainWorker
        return worker(backend=LocalChatBackend(lm, seed=0), **kwargs)
    raise ValueError(f"unknown worker {kind!r}; choose from ['briefed', 'plain', 'text']")
