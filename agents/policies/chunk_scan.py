"""ChunkScanPolicy: a scripted orchestrator that needs no LLM.

Idea: the chunking strategy the RLM paper's system prompt teaches (Zhang & Khattab, "Recursive
Language Models", 2025): split the context, ask a sub-model about each chunk, keep the answers in a
buffer, ask for the final answer over the buffer. Here the chunk is *printed* first, so it lands in
the orchestrator trajectory, and the per-chunk question is short: the worker learns the chunk from
the trajectory (pasted as text, or as a compacted KV cache for the briefed worker), which is what
latent briefing is about. Then a verification call, one retry if the check says no, and the answer.

Parameters:
    chunk_chars: characters per chunk (a list context is scanned item by item)
    overlap: characters shared by consecutive chunks
    max_chunks: scan at most this many chunks (None: all)
    show_chunks: print each chunk into the trajectory (False: put the chunk in the worker query)
    verify: ask the worker to check the answer, retry once when it says no
    max_tries: attempts at the answer (and at the check) when the worker call fails; then it stops
    note_query / answer_query / verify_query / retry_query: the worker questions ({i}, {n},
        {query}, {chunk} where it applies)

The policy is stateless: it reads its progress from the REPL variables (`n_chunks`, `scanned`,
`tries`, `answer`, `checks`, `verdict`, `retried`), so one instance can serve many runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from briefing.options import check_int
from agents.policy import OrchestratorPolicy, RunState, Step


@dataclass
class ChunkScanPolicy(OrchestratorPolicy):
    chunk_chars: int = 1500
    overlap: int = 0
    max_chunks: int | None = None
    show_chunks: bool = True
    verify: bool = True
    max_tries: int = 2
    note_query: str = ("Chunk {i} of {n} is printed above. {query} If this chunk does not say, "
                       "reply 'not in this chunk'.")
    answer_query: str = "{query} Answer from the worker notes above, in a few words."
    verify_query: str = ("Question: {query}\nProposed answer: {answer}\nIs the proposed answer supported by the "
                         "text above? Reply yes or no.")
    retry_query: str = ("A check found the previous answer unsupported. Reread the chunks and notes above and "
                        "answer again in a few words: {query}")
    name: str = "chunk-scan"

    def __post_init__(self) -> None:
        for name, low in (("chunk_chars", 1), ("overlap", 0), ("max_tries", 1)):
            check_int("ChunkScanPolicy", name, getattr(self, name), low=low, error=ValueError)
        if self.overlap >= self.chunk_chars:
            raise ValueError(f"ChunkScanPolicy: overlap must be smaller than chunk_chars ({self.chunk_chars}), "
                             f"got {self.overlap}.")
        check_int("ChunkScanPolicy", "max_chunks", self.max_chunks, low=1, none=True, what="or None", error=ValueError)

    def chunks(self, context: object) -> int:
        """How many chunks this policy makes of `context` (a str, or a list/tuple scanned item by item)."""
        if isinstance(context, (list, tuple)):
            n = len(context)
        else:
            n = len(range(0, max(1, len(str(context))), max(1, self.chunk_chars - self.overlap)))
        return min(n, self.max_chunks) if self.max_chunks else n

    def budgets_for(self, context: object) -> tuple[int, int]:
        """(steps, worker calls) a whole scan of `context` can take: one step and one call per chunk, plus the
        set-up, the answer, the check, a retry, the failed tries and the final step."""
        n = self.chunks(context)
        return n + 2 * self.max_tries + 4, n + 2 * self.max_tries + 2

    def step(self, state: RunState) -> Step:
        names = state.variables
        if "n_chunks" not in names:
            return self._setup()
        n = int(state.get("n_chunks", 0) or 0)
        scanned = int(state.get("scanned", 0) or 0)
        if scanned < n:
            return self._read(scanned, n, state.query)
        if "answer" not in names:
            if int(state.get("tries", 0) or 0) >= self.max_tries:
                return Step(text="The worker could not answer; giving up.", stop=True)
            return Step(text="All chunks read; asking for the answer.",
                        code=f"tries += 1\nanswer = worker({self.answer_query.format(query=state.query)!r})\n"
                             "print(answer)")
        if self.verify and "verdict" not in names and int(state.get("checks", 0) or 0) < self.max_tries:
            q = self.verify_query.replace("{query}", state.query)
            return Step(text="Checking the answer.",
                        code=f"checks += 1\nverdict = worker({q!r}.replace('{{answer}}', str(answer)))\nprint(verdict)")
        verdict = str(state.get("verdict", "") or "").strip().lower()
        if self.verify and verdict.startswith("no") and "retried" not in names:
            return Step(text="The check says no; asking once more.",
                        code=f"retried = True\nanswer = worker({self.retry_query.format(query=state.query)!r})\n"
                             "print(answer)")
        return Step(text="Done.\nFINAL_VAR(answer)")

    def _setup(self) -> Step:
        size, step = max(1, self.chunk_chars), max(1, self.chunk_chars - self.overlap)
        limit = f"[:{int(self.max_chunks)}]" if self.max_chunks else ""
        code = (
            "if isinstance(context, (list, tuple)):\n"
            "    chunks = [str(c) for c in context]\n"
            "else:\n"
            f"    chunks = [str(context)[i:i + {size}] for i in range(0, max(1, len(str(context))), {step})]\n"
            f"chunks = chunks{limit}\n"
            "n_chunks = len(chunks)\n"
            "scanned = tries = checks = 0\n"
            "notes = []\n"
            # a summary, not every length: a 5 MB context has thousands of chunks
            "print(f'{n_chunks} chunks of {min(map(len, chunks))} to {max(map(len, chunks))} characters, '\n"
            "      f'{sum(map(len, chunks)):,} characters in all' if chunks else '0 chunks')"
        )
        return Step(text="Splitting the context into chunks.", code=code)

    def _read(self, i: int, n: int, query: str) -> Step:
        q = self.note_query.format(i=i + 1, n=n, query=query, chunk="{chunk}")
        if self.show_chunks:
            cells = [f"print(chunks[{i}])", f"scanned = {i + 1}\nnotes.append(worker({q!r}))"]
        else:
            q = q + "\n\nChunk:\n{chunk}" if "{chunk}" not in self.note_query else q
            cells = [f"scanned = {i + 1}\nnotes.append(worker({q!r}.replace('{{chunk}}', chunks[{i}])))"]
        return Step(text=f"Reading chunk {i + 1} of {n}.", code=cells)

    def partial_answer(self, state: RunState) -> str | None:
        answer = state.get("answer")
        if answer:
            return str(answer)
        notes = state.get("notes") or []
        return " ".join(str(x) for x in notes) or None
