"""LLMPolicy: an LLM orchestrator, as in Recursive Language Models (Zhang & Khattab, 2025).

The model sees a system prompt in the spirit of the RLM paper's (the REPL holds `context`; it can
call `worker(query)` / `worker_batch(queries)`; it ends with `FINAL(answer)` or `FINAL_VAR(name)`),
a first user message with the query and the shape of the context (never the context itself), then
its own earlier responses, each followed by the REPL output of the code it ran. Code goes in
```repl (or ```python) fences; the runtime runs every fenced block in order.

Parameters:
    backend: a `ChatBackend` (`OpenAIChatBackend`, `LocalChatBackend`, ...)
    system_prompt: the system prompt (default `RLM_SYSTEM_PROMPT`)
    max_output_chars: REPL output shown per cell (head and tail kept)
    next_action_prompt: the closing user message of every turn
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.backends.base import ChatBackend
from briefing.options import check_int
from agents.events import CellOutput, CodeCell, Notice, OrchestratorMessage
from agents.policy import OrchestratorPolicy, RunState, Step

RLM_SYSTEM_PROMPT = """You are tasked with answering a query about an associated context. The context can be far too
long to read at once; you work with it in a Python REPL, and you can query worker language models from inside the
REPL. You will be called iteratively until you give a final answer.

The REPL holds:
1. `context`: the data for the query (usually a long string, sometimes a list of strings). Look at its size and a
few slices before deciding how to read it.
2. `worker(query: str) -> str`: asks a worker model. The worker already knows your trajectory so far (your messages,
code, REPL outputs and earlier worker answers), so you can refer to what you printed ("the chunk printed above")
instead of pasting it again; you can also put text directly in the query.
3. `worker_batch(queries: list[str]) -> list[str]`: several worker queries at once, run concurrently, answers in the
same order. A query that failed gives a string starting with "[worker error]" in its place, and the other answers
stand: check with `answer.startswith("[worker error]")`. (`llm_query` and `llm_query_batched` are `worker` and
`worker_batch` under other names.)
4. `FINAL(value)` and `FINAL_VAR(name)`: end the run with a value, or with the value of a REPL variable given by name.
5. `print()` to see values. Outputs are truncated, so print slices and summaries, not whole documents.

To run code, put it in a ```repl block; every block in your response runs in order and you get the output back. For
example, to read a long context in chunks:
```repl
chunks = [context[i:i + 4000] for i in range(0, len(context), 4000)]
notes = []
for i, chunk in enumerate(chunks):
    notes.append(worker(f"Chunk {i} of {len(chunks)}:\\n{chunk}\\n\\nWhat here helps answer: {query}?"))
print(notes)
```
Then combine the notes, with a worker call if it needs understanding:
```repl
answer = worker("Using these notes, answer the question: " + query + "\\n" + "\\n".join(notes))
print(answer)
```
Variables persist between blocks and between turns. Imports are limited to a safe standard-library subset.

When you are done, give the final answer on its own line, outside code: FINAL(your answer) or
FINAL_VAR(variable_name). Do not write FINAL until you have actually looked at the context. Work step by step, and
act now rather than describing what you will do."""

NEXT_ACTION = ("Continue using the REPL (it holds `context`, `worker`, `worker_batch`) to answer the query. "
               "When you have the answer, reply with FINAL(...) or FINAL_VAR(...). Your next action:")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


@dataclass
class LLMPolicy(OrchestratorPolicy):
    backend: ChatBackend
    system_prompt: str = RLM_SYSTEM_PROMPT
    max_output_chars: int = 8000
    next_action_prompt: str = NEXT_ACTION
    name: str = "llm"

    def __post_init__(self) -> None:
        if not isinstance(self.backend, ChatBackend):
            raise TypeError("LLMPolicy: backend must be an agents.ChatBackend (OpenAIChatBackend, LocalChatBackend, "
                            f"...), got {type(self.backend).__name__}.")
        check_int("LLMPolicy", "max_output_chars", self.max_output_chars, low=1, error=ValueError)

    def step(self, state: RunState) -> Step:
        resp = self.backend.complete(self.messages(state))
        return Step(text=resp.text, input_tokens=resp.input_tokens, output_tokens=resp.output_tokens)

    def messages(self, state: RunState) -> list[dict[str, str]]:
        """The chat history for the next step, rebuilt from the run's events."""
        lengths = state.context_lengths[:20]
        shape = f"a {state.context_type} of {state.context_length} total characters"
        if state.context_type != "str":
            more = " ..." if len(state.context_lengths) > 20 else ""
            shape += f", in {len(state.context_lengths)} items of lengths {lengths}{more}"
        msgs = [{"role": "system", "content": self.system_prompt},
                {"role": "user",
                 "content": f"Query: {state.query}\n\nYour context is {shape}. It is in the REPL as `context`; the "
                            "query is in `query`."}]
        for e in state.events:
            if isinstance(e, OrchestratorMessage):
                msgs.append({"role": "assistant", "content": e.text or "(empty)"})
            elif isinstance(e, CodeCell):
                msgs.append({"role": "user", "content": f"Code executed:\n```python\n{e.code}\n```\n\nREPL output:\n"})
            elif isinstance(e, CellOutput):
                body = _clip(e.text() or "No output", self.max_output_chars)
                if msgs[-1]["role"] == "user" and msgs[-1]["content"].endswith("REPL output:\n"):
                    msgs[-1]["content"] += body
                else:
                    msgs.append({"role": "user", "content": f"REPL output:\n{body}"})
            elif isinstance(e, Notice):
                msgs.append({"role": "user", "content": f"Note from the runtime: {e.text}"})
        msgs.append({"role": "user", "content": self.next_action_prompt})
        return msgs

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend.name, "model": self.backend.model}
