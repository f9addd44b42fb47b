"""The worker prompt: the orchestrator trajectory inside the worker model's chat template.

With a chat template rendering ``system`` then ``user`` then the assistant opening, the text a
worker model reads is::

    head  +  system header + TRAJECTORY  +  mid  +  QUERY  +  tail
    \\_____________ cache text ____________/ \\________ per-call prompt ______/

`head`, `mid` and `tail` are cut out of the model's own template (``lm.chat_prompt``) around two
sentinels, so any chat model works. The cache text
only grows as the trajectory grows (the briefed worker extends its KV cache with the new text); the
per-call prompt closes the system turn, asks the query as the user turn and opens the assistant turn.
The text worker pastes exactly ``cache text + prompt``: the same tokens, all billed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing

TRAJECTORY_HEADER = (
    "You are a worker model assisting an orchestrator that answers a question by running Python code "
    "in a REPL over a long context. Below is the orchestrator's trajectory so far: its messages, the "
    "code it ran, the outputs it saw and earlier worker answers. Use it to answer the orchestrator's "
    "request that follows. Answer briefly and precisely.\n\n"
    "=== Orchestrator trajectory ===\n"
)
PLAIN_SYSTEM = "You are a helpful assistant. Answer briefly and precisely."

_SYS, _USR = "\u2063SYSTEM\u2063", "\u2063USER\u2063"


@dataclass(frozen=True)
class ChatSplit:
    head: str
    mid: str
    tail: str

    def wrap(self, system: str, user: str) -> str:
        return self.head + system + self.mid + user + self.tail


def split_chat_template(lm: briefing.LoadedModel) -> ChatSplit:
    """Cut the model's chat template (`lm.chat_prompt`, which has the project's one fallback for tokenizers
    without a template) around a system and a user sentinel. A template that refuses or drops the system turn
    gets the system text at the start of the user turn."""
    from jinja2 import TemplateError   # what transformers renders chat templates with

    for system, user in ((_SYS, _USR), (None, _SYS + "\n\n" + _USR)):
        try:
            full = lm.chat_prompt(system, user)
        except TemplateError:   # e.g. "System role not supported": try the next form
            continue
        i, j = full.find(_SYS), full.find(_USR)
        if 0 <= i < j:
            return ChatSplit(full[:i], full[i + len(_SYS): j], full[j + len(_USR):])
    raise ValueError(f"The chat template of {lm.name} renders neither a system and a user message nor one user "
                     "message with the text intact: give the model a chat template that does.")


@dataclass(frozen=True)
class WorkerPrompt:
    split: ChatSplit
    header: str = TRAJECTORY_HEADER
    plain_system: str = PLAIN_SYSTEM

    @classmethod
    def for_model(cls, lm: briefing.LoadedModel, header: str = TRAJECTORY_HEADER,
                  plain_system: str = PLAIN_SYSTEM) -> "WorkerPrompt":
        return cls(split_chat_template(lm), header, plain_system)

    def cache_text(self, trajectory: str) -> str:
        return self.split.head + self.header + trajectory

    def call_prompt(self, query: str) -> str:
        return self.split.mid + query + self.split.tail

    def text_prompt(self, trajectory: str, query: str) -> str:
        return self.cache_text(trajectory) + self.call_prompt(query)

    def plain_prompt(self, query: str) -> str:
        return self.split.wrap(self.plain_system, query)
