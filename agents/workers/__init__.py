"""Workers: who answers `worker(query)` calls from the orchestrator's REPL."""
from agents.workers.base import CallContext, Worker, WorkerAnswer
from agents.workers.briefed import BriefedWorker
from agents.workers.plain import PlainWorker
from agents.workers.prompt import ChatSplit, WorkerPrompt, split_chat_template
from agents.workers.text import TextWorker

__all__ = ["CallContext", "Worker", "WorkerAnswer", "BriefedWorker", "PlainWorker", "TextWorker", "ChatSplit", "WorkerPrompt",
           "split_chat_template", "make_worker"]


def make_worker(kind: str, lm=None, **kwargs) -> Worker:
    """'briefed' | 'text' | 'plain' -> a worker on the local model `lm` (None: the embedded default)."""
    kinds = {"briefed": BriefedWorker, "text": TextWorker, "plain": PlainWorker}
    if kind not in kinds:
        raise ValueError(f"unknown worker {kind!r}; choose from {sorted(kinds)}")
    return kinds[kind](lm=lm, **kwargs)
