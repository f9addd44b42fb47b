"""Episodes of the long-trajectory suite: trajectories several times the worker's window, rendered by the runtime's
own events (`rlm.events`, `rlm.trajectory.Trajectory`), with four facts to recall.

A scripted orchestrator reads essay sections (REPL outputs), asks the worker about each one and takes notes. Four
target facts of four kinds ("The safe combination is 4417", "The piano teacher is named Mary", "The mailbox is
painted red", "The pub sign is a tiger") are planted one per quarter of the trajectory (in a REPL output, a worker
answer or a note, cycling), plus one distractor of each kind (another key, another value) anywhere. At the end the
worker is asked for each target (one call per fact); the candidates are the answer, the distractor's value and two
values never planted (chance 1/4), scored by summed log-prob after the lead-in, e.g. "The mailbox is painted"
(`benchmarks.rlm_bench.conditions.choose`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from agents.workers.base import WorkerAnswer
from rlm.data import essay_names, read_essay
from rlm.events import CellOutput, CodeCell, OrchestratorMessage, RunStart, WorkerCall
from rlm.trajectory import Trajectory

QUARTERS = {1: (0.03, 0.22), 2: (0.28, 0.47), 3: (0.53, 0.72), 4: (0.78, 0.97)}
CARRIERS = ("output", "worker", "note")
SPLIT_SEED = {"dev": 0, "heldout": 100_000}
SPLIT_SPAN = 100_000   # episode e of a split has seed SPLIT_SEED + e


@dataclass(frozen=True)
class Kind:
    """A fact form. Values are one token with a leading space (names, colours, animals) or four digits (codes), so
    the candidates of a question have equal token counts."""

    statement: str  # "{key}", "{value}"
    question: str   # "{key}"
    lead: str       # the answer's lead-in, "{key}"
    keys: tuple[str, ...]
    values: tuple[str, ...]


KINDS = [
    Kind("The {key} is {value}", "What is the {key}?", "The {key} is",
         ("safe combination", "alarm code", "locker number", "garage code", "printer PIN", "gate code"), ()),
    Kind("The {key} is named {value}", "What is the name of the {key}?", "The {key} is named",
         ("new landlord", "magazine editor", "family dentist", "piano teacher", "tax lawyer", "next-door neighbour"),
         ("Peter", "John", "Mary", "Alice", "Robert", "David", "Sarah", "Michael", "Emma", "James", "Anna", "Paul")),
    Kind("The {key} is painted {value}", "What colour is the {key} painted?", "The {key} is painted",
         ("front door", "garden fence", "old bicycle", "mailbox", "rowing boat", "delivery van"),
         ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey")),
    Kind("The {key} is a {value}", "What animal is the {key}?", "The {key} is a",
         ("football team's mascot", "hotel logo", "chess club emblem", "pub sign", "garden statue", "company flag"),
         ("horse", "tiger", "eagle", "rabbit", "wolf", "bear", "snake", "mouse", "whale", "shark", "lion", "zebra")),
]


@dataclass
class Question:
    key: str
    answer: str
    quarter: int
    offset: float   # character offset of the statement / trajectory length
    question: str   # "What is the safe combination?"
    lead: str       # the answer's lead-in ("The safe combination is")
    candidates: list[str]  # the answer, the same-kind distractor's value and two values never planted


@dataclass
class LongEpisode:
    id: str
    seed: int
    target_tokens: int
    task: str
    chunks: list[tuple[str, str | None]]  # (trajectory text added, worker query asked after it or None)
    questions: list[Question]

    @property
    def text(self) -> str:
        return "".join(c for c, _ in self.chunks)


def _codes(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = str(rng.randint(1000, 9999))
        if not any(sum(a == b for a, b in zip(v, o)) >= 2 for o in out):
            out.append(v)
    return out


def _sections(rng: random.Random, chars: int) -> list[str]:
    names = essay_names()
    out, total, i, start = [], 0, 0, rng.randrange(len(names))
    while total < chars:
        paras = [p.strip() for p in read_essay(names[(start + i) % len(names)]).split("\n") if p.strip()]
        i += 1
        cur = ""
        for p in paras:
            cur = f"{cur}\n{p}" if cur else p
            if len(cur) >= 900:
                out.append(cur[:1500])
                total += len(out[-1]) + 450
                cur = ""
                if total >= chars:
                    break
    return out


def make_long_episode(seed: int, target_tokens: int, chars_per_token: float = 4.1) -> LongEpisode:
    """One episode of about `target_tokens` tokens, deterministic from (seed, target_tokens).

    Four target facts of four kinds (a code, a name, a colour, an animal), one per quarter in shuffled kind order;
    one distractor of each kind (other key, other value) anywhere. A question's candidates are its value, its
    distractor's value and two values of that kind never planted (chance 1/4)."""
    rng = random.Random(f"rlm-long:{seed}:{target_tokens}")
    sections = _sections(rng, int(target_tokens * chars_per_token))
    n = len(sections)
    kinds = rng.sample(KINDS, 4)
    facts = []  # (kind, key, value, quarter or 0, other values)
    for qt, kind in enumerate(kinds, start=1):
        keys = rng.sample(kind.keys, 2)
        pool = _codes(rng, 4) if not kind.values else rng.sample(kind.values, 4)
        facts.append((kind, keys[0], pool[0], qt, pool))
        facts.append((kind, keys[1], pool[1], 0, pool))
    at: dict[int, list[tuple[int, Any]]] = {}
    for j, f in enumerate(facts):
        lo, hi = QUARTERS[f[3]] if f[3] else (0.05, 0.95)
        at.setdefault(min(n - 1, int(rng.uniform(lo, hi) * n)), []).append((j, f))
    task = ("Go through the document, collect every fact it states about people, objects and codes, then answer "
            "questions.")
    traj = Trajectory(run_id=f"long-{seed}")
    chunks: list[tuple[str, str | None]] = []
    mark = 0
    calls = 0
    offsets: dict[int, int] = {}

    def add(e: Any) -> None:
        e.run_id, e.seq = traj.run_id, len(traj.events)
        traj.append(e, stamp=False)

    def call(it: int, query: str, answer: str) -> None:
        nonlocal mark, calls
        chunks.append((traj.text[mark:], query))  # the worker is called here, on the text so far
        mark = len(traj.text)
        calls += 1
        add(WorkerCall(call_id=f"long-{seed}.{calls}", iteration=it, index=calls, query=query, worker="worker",
                       result=WorkerAnswer(text=answer, worker="worker")))

    add(RunStart(query=task, context_length=sum(map(len, sections)), worker={"name": "worker"}))
    add(OrchestratorMessage(iteration=0, text=f"I will read the document in {n} sections, ask the worker about each "
                                              "one and note every fact I find."))
    for s, section in enumerate(sections):
        it = s + 1
        add(OrchestratorMessage(iteration=it, text=f"Reading section {it} of {n}."))
        add(CodeCell(iteration=it, cell=0, code=f"section = sections[{s}]\nprint(section)"))
        add(CellOutput(iteration=it, cell=0, stdout=section))
        first = section.replace("\n", " ").split(". ")[0][:150]
        call(it, f"In one sentence, what is section {it} about?", f"Section {it} says: {first}.")
        for j, (kind, key, value, _, _) in at.get(s, []):
            statement = kind.statement.format(key=key, value=value)
            carrier = CARRIERS[(seed + j) % 3]
            before = len(traj.text)
            if carrier == "output":
                add(CodeCell(iteration=it, cell=1, code="print(extract_facts(section))"))
                add(CellOutput(iteration=it, cell=1, stdout=f"Found: {statement}."))
            elif carrier == "worker":
                call(it, f"Does section {it} state a fact about a person, an object or a code? Quote it.",
                     f"Yes: {statement}.")
            else:
                add(OrchestratorMessage(iteration=it, text=f"Note to self: {statement}. I will need this later."))
            offsets[j] = traj.text.index(statement, before)
    chunks.append((traj.text[mark:], None))
    total = len(traj.text)
    questions = []
    for j, (kind, key, value, qt, pool) in enumerate(facts):
        if qt:
            cands = sorted(pool, key=lambda v: random.Random(f"{seed}:{key}:{v}").random())
            questions.append(Question(key, value, qt, offsets[j] / total, kind.question.format(key=key),
                                      kind.lead.format(key=key), cands))
    return LongEpisode(f"long-s{seed}-t{target_tokens}", seed, target_tokens, task, chunks, questions)


def question_event(q: Question, i: int) -> str:
    """Text the orchestrator adds before asking about a fact (so each final call has new tokens to extend by)."""
    return f"[orchestrator]\nAll sections read. Question {i + 1}: I ask the worker for the {q.key}.\n\n"


def question_text(q: Question) -> str:
    return f"{q.question} Answer in one word."




@dataclass(frozen=True)
class LongSpec:
    """A picklable recipe for one episode (what the runner ships to a process or a Ray task): episode `index` of a
    split at `target_tokens` (its seed is the same at every length)."""

    split: str
    index: int
    target_tokens: int

    @property
    def seed(self) -> int:
        return SPLIT_SEED[self.split] + self.index

    def build(self, count_tokens=None) -> LongEpisode:
        return make_long_episode(self.seed, self.target_tokens)
