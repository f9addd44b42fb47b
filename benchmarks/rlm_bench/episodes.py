"""Synthetic multi-step episodes over real essays, deterministic from a seed.

A scripted orchestrator works through an essay section by section: it writes a plan, runs code that
prints a section (the essay chunk is the REPL output), asks the worker about the section (scripted
answer), and writes notes. One *target fact* is planted at a controlled depth (early / middle / late)
in one of three carriers: a REPL output, an earlier worker answer, or the orchestrator's own note.
Distractor facts of the same kind are planted elsewhere. The final worker question asks for the target
fact's value by its key; the candidates are the target value and the distractors' values, so the
question alone does not tell which is right (plain = chance), and the fact is only in the trajectory.

Design choices that make this a measurement a 135M worker can pass with the full trajectory (found by
diagnosis: with facts like "the access code found in section 28 is 1062" / "... section 26 is 1179",
keys that differ in one token (and collide with the real "section N" headers) and values of different
token lengths scored by mean log-prob, `full` was near chance):

- every fact of an episode has a clearly different *key phrase* ("The safe combination is 4417",
  "The alarm code is 9023"; "The magazine editor is named Mary", "The piano teacher is named John"),
  and the question names the target's key ("What is the safe combination?");
- the answer lead-in restates the key in the statement's own words ("The safe combination is"), so the
  value follows the same tokens as in the trajectory;
- values are 4-digit codes (pairwise differing in at least two digits) or single common words that are
  one token with a leading space for SmolLM2-style BPE tokenisers, so the candidates of an episode
  have equal token counts and are scored by summed log-prob (`benchmarks.rlm_bench.conditions.choose`).

The trajectory is rendered with the runtime's own event models and renderer (`rlm.events.render`
through `rlm.trajectory.Trajectory`), i.e. exactly the append-only text a worker reads at run time.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlm.data import data_dir
from rlm.events import CellOutput, CodeCell, OrchestratorMessage, RunStart, WorkerCall
from rlm.trajectory import Trajectory

CARRIERS = ("output", "worker", "note")
DEPTHS = {"early": (0.05, 0.2), "middle": (0.4, 0.6), "late": (0.8, 0.95)}

# Keys: clearly different attributes (no two facts of an episode share their wording apart from one word).
# Values: 4-digit codes or single common words (one token each, with the leading space, for BPE tokenisers
# like SmolLM2's), so every candidate of an episode has the same token count.
CODE_KEYS = ["safe combination", "alarm code", "locker number", "wifi password", "garage code", "printer PIN",
             "gate code", "bike lock code"]
PEOPLE = ["author's oldest friend", "new landlord", "magazine editor", "cousin from Boston", "family dentist",
          "next-door neighbour", "piano teacher", "tax lawyer"]
PAINTED = ["front door", "kitchen wall", "garden fence", "old bicycle", "mailbox", "rowing boat", "delivery van",
           "attic ladder"]
EMBLEMS = ["football team's mascot", "hotel logo", "chess club emblem", "pub sign", "weather vane on the barn",
           "garden statue", "company flag", "bakery sign"]
FIRST = ["Peter", "John", "Mary", "Alice", "Robert", "David", "Sarah", "Michael", "Emma", "James", "Anna", "Paul",
         "Laura", "George", "Helen", "Thomas", "Linda", "Daniel", "Maria", "Frank", "Karen"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey", "silver",
           "gold"]
ANIMALS = ["horse", "tiger", "eagle", "rabbit", "wolf", "bear", "snake", "mouse", "whale", "shark", "lion", "zebra"]


@dataclass(frozen=True)
class Template:
    """A fact form: `statement(key, value)`, the question for a key, how keys and values are drawn."""

    kind: str
    statement: str     # "{key}" and "{value}" placeholders
    question: str      # "{key}" placeholder
    prefix: str        # the answer's lead-in, "{key}" placeholder (the statement up to its value)
    keys: Callable[[random.Random, int], list[str]]
    values: Callable[[random.Random, int], list[str]]


def _codes(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = str(rng.randint(1000, 9999))
        if v not in out and not any(sum(a == b for a, b in zip(v, o)) >= 3 for o in out):
            out.append(v)
    return out


TEMPLATES = [
    Template("code", "The {key} is {value}", "What is the {key}?", "The {key} is",
             lambda r, n: r.sample(CODE_KEYS, n), _codes),
    Template("name", "The {key} is named {value}", "What is the name of the {key}?", "The {key} is named",
             lambda r, n: r.sample(PEOPLE, n), lambda r, n: r.sample(FIRST, n)),
    Template("colour", "The {key} is painted {value}", "What colour is the {key} painted?", "The {key} is painted",
             lambda r, n: r.sample(PAINTED, n), lambda r, n: r.sample(COLOURS, n)),
    Template("animal", "The {key} is a {value}", "What animal is the {key}?", "The {key} is a",
             lambda r, n: r.sample(EMBLEMS, n), lambda r, n: r.sample(ANIMALS, n)),
]


@dataclass
class Fact:
    key: str
    value: str
    statement: str
    carrier: str
    step: int
    target: bool


@dataclass
class Episode:
    id: str
    seed: int
    target_tokens: int
    depth: str
    n_distractors: int
    kind: str
    essay: str
    task: str
    trajectory: str
    question: str
    answer: str
    candidates: list[str]
    answer_prefix: str       # scored continuation = " " + answer_prefix + " " + candidate
    facts: list[Fact]
    n_steps: int
    fact_offset: float       # character offset of the target statement / trajectory length
    fact_carrier: str
    events: list[Any] = field(default_factory=list, repr=False)
    family: str = "multi_key"  # task family (benchmarks.rlm_bench.families); make_episode builds multi-key lookups

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "family": self.family, "seed": self.seed, "target_tokens": self.target_tokens,
                "depth": self.depth,
                "n_distractors": self.n_distractors, "kind": self.kind, "essay": self.essay, "n_steps": self.n_steps,
                "fact_offset": round(self.fact_offset, 4), "fact_carrier": self.fact_carrier,
                "question": self.question, "answer_prefix": self.answer_prefix, "answer": self.answer,
                "candidates": self.candidates,
                "trajectory_chars": len(self.trajectory)}


def essay_names(data: Path | None = None) -> list[str]:
    folder = (data or data_dir()) / "pg_essays"
    names = sorted(p.name for p in folder.glob("*.txt"))
    if not names:
        raise FileNotFoundError(f"no essays in {folder} (unset LATENT_BRIEFING_DATA to use the shipped essays)")
    return names


def _chunks(text: str, rng: random.Random, lo: int = 700, hi: int = 1300) -> list[str]:
    """Paragraph-aligned chunks of about lo..hi characters."""
    paras = [p.strip() for p in text.split("\n") if p.strip()]
    out, cur = [], ""
    target = rng.randint(lo, hi)
    for p in paras:
        cur = f"{cur}\n{p}" if cur else p
        if len(cur) >= target:
            out.append(cur[: hi + 400])
            cur, target = "", rng.randint(lo, hi)
    if cur:
        out.append(cur)
    return out


def section_events(it: int, s: int, n_steps: int, chunk: str, call_id: str) -> list[Any]:
    """The events of reading section `s` (iteration `it`): the orchestrator's note, the cell printing the section,
    its output and the worker's one-sentence summary (the episodes' common step; facts are added after it)."""
    return [OrchestratorMessage(iteration=it, text=f"Reading section {it} of {n_steps}."),
            CodeCell(iteration=it, cell=0, code=f"section = sections[{s}]\nprint(section)"),
            CellOutput(iteration=it, cell=0, stdout=chunk),
            WorkerCall(call_id=call_id, iteration=it, index=int(call_id.rsplit(".", 1)[1]),
                       query=f"In one sentence, what is section {it} about?",
                       answer=f"Section {it} says: {_first_sentence(chunk)}", worker="worker")]


def _first_sentence(chunk: str, limit: int = 160) -> str:
    s = chunk.replace("\n", " ").strip()
    for stop in (". ", "? ", "! "):
        i = s.find(stop)
        if 0 < i < limit:
            return s[: i + 1]
    return s[:limit].rsplit(" ", 1)[0] + " ..."


def make_episode(seed: int, target_tokens: int = 1000, depth: str | None = None, n_distractors: int | None = None,
                 carrier: str | None = None, kind: str | None = None, chars_per_token: float = 4.0,
                 data: Path | None = None) -> Episode:
    """One episode. Everything not given is drawn from `seed`; the same arguments give the same episode."""
    rng = random.Random(f"rlm-bench:{seed}:{target_tokens}:{depth}:{n_distractors}:{carrier}:{kind}")
    depth = depth or rng.choice(list(DEPTHS))
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {list(DEPTHS)}, got {depth!r}")
    n_distractors = rng.randint(2, 4) if n_distractors is None else n_distractors
    template = next((t for t in TEMPLATES if t.kind == kind), None) if kind else rng.choice(TEMPLATES)
    if template is None:
        raise ValueError(f"kind must be one of {[t.kind for t in TEMPLATES]}, got {kind!r}")
    target_carrier = carrier or rng.choice(CARRIERS)
    names = essay_names(data)
    folder = (data or data_dir()) / "pg_essays"

    # filler: sections of essays (continuing into the next essay when one runs out)
    budget_chars = int(target_tokens * chars_per_token)
    start = rng.randrange(len(names))
    sections: list[str] = []
    used: list[str] = []
    est = 400  # task + header overhead
    i = 0
    while est < budget_chars * 0.92:
        name = names[(start + i) % len(names)]
        i += 1
        used.append(name)
        for ch in _chunks(folder.joinpath(name).read_text(encoding="utf-8", errors="replace"), rng):
            sections.append(ch)
            est += len(ch) + 330  # chunk + message/code/worker-call scaffolding
            if est >= budget_chars * 0.92:
                break
        if i > len(names):
            break
    n_steps = max(len(sections), 2)

    # facts: keys/values, target + distractors, steps and carriers
    keys = template.keys(rng, n_distractors + 1)
    values = template.values(rng, n_distractors + 1)
    lo, hi = DEPTHS[depth]
    target_step = min(n_steps - 1, max(0, int(round(rng.uniform(lo, hi) * (n_steps - 1)))))
    facts = [Fact(keys[0], values[0], template.statement.format(key=keys[0], value=values[0]), target_carrier,
                  target_step, True)]
    for k, v in zip(keys[1:], values[1:]):
        step = rng.randrange(n_steps)
        facts.append(Fact(k, v, template.statement.format(key=k, value=v), rng.choice(CARRIERS), step, False))
    by_step: dict[int, list[Fact]] = {}
    for f in facts:
        by_step.setdefault(f.step, []).append(f)
    for fs in by_step.values():
        rng.shuffle(fs)

    task = (f"Go through the document and collect every {template.kind} fact it mentions (codes, names, labels, "
            f"hints), then answer questions about them.")
    traj = Trajectory(run_id=f"bench-{seed}")
    stamp = False

    def add(e: Any) -> None:
        e.run_id, e.seq = traj.run_id, len(traj.events)
        traj.append(e, stamp=stamp)

    add(RunStart(query=task, context_length=sum(len(s) for s in sections), worker={"name": "worker"}))
    add(OrchestratorMessage(iteration=0, text=f"I will read the document in {n_steps} sections, ask the worker "
                                               f"about each one and keep notes of the facts I find."))
    calls = 0
    target_at = -1
    for s, chunk in enumerate(sections):
        it = s + 1
        calls += 1
        for e in section_events(it, s, n_steps, chunk, f"bench-{seed}.{calls}"):
            add(e)
        for f in by_step.get(s, []):
            marker = len(traj.text)
            if f.carrier == "output":
                add(CodeCell(iteration=it, cell=1, code=f"print(extract_facts(section, kind={template.kind!r}))"))
                add(CellOutput(iteration=it, cell=1, stdout=f"Found: {f.statement}."))
            elif f.carrier == "worker":
                calls += 1
                add(WorkerCall(call_id=f"bench-{seed}.{calls}", iteration=it, index=calls,
                               query=f"Does section {it} mention any {template.kind} fact? Quote it.",
                               answer=f"Yes: {f.statement}.", worker="worker"))
            else:
                add(OrchestratorMessage(iteration=it, text=f"Note to self: {f.statement}. I will need this later."))
            if f.target:
                target_at = traj.text.index(f.statement, marker)
    text = traj.text
    question = template.question.format(key=keys[0])
    candidates = sorted(values, key=lambda v: random.Random(f"{seed}:{v}").random())
    return Episode(
        id=f"s{seed}-t{target_tokens}-{depth}-d{n_distractors}", seed=seed, target_tokens=target_tokens, depth=depth,
        n_distractors=n_distractors, kind=template.kind, essay=used[0], task=task, trajectory=text, question=question,
        answer=values[0], candidates=candidates, answer_prefix=template.prefix.format(key=keys[0]), facts=facts,
        n_steps=n_steps,
        fact_offset=target_at / max(1, len(text)), fact_carrier=target_carrier, events=list(traj.events))


def make_suite(lengths: list[int], per_length: int, seed: int = 0, data: Path | None = None) -> list[Episode]:
    """`per_length` episodes per trajectory length, cycling depth (early/middle/late), carrier and distractors."""
    eps = []
    depths, carriers = list(DEPTHS), list(CARRIERS)
    for li, n in enumerate(lengths):
        for j in range(per_length):
            k = seed * 1000 + li * 100 + j
            eps.append(make_episode(k, n, depth=depths[j % 3], n_distractors=2 + (j % 3),
                                    carrier=carriers[(j + li) % 3], data=data))
    return eps
