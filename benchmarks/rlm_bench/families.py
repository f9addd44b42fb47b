"""RULER-style task families over the essays, carried in the runtime's real trajectory events.

Each episode is a scripted orchestrator run over essay sections (plan message, a code cell printing a
section, its output, a worker call summarising it); the family's statements are planted at a controlled
depth in one of three carriers (a REPL output, an earlier worker answer, an orchestrator note), and the
final worker question is a multiple choice scored by log-likelihood (`benchmarks.rlm_bench.conditions.choose`): the
candidates of an episode have the same token count, so the summed log-prob needs no normalisation.

Families (after RULER, Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context
Language Models?", where they fit):

- ``single_key``: one fact ("The gate code is 4417"); candidates: its value and codes absent from the run.
- ``multi_key``: the target fact among 3 facts of the same kind with other keys (the episodes of
`benchmarks.rlm_bench.episodes`).
- ``multi_value``: one key with two values, planted apart; candidates: the right pair and pairs mixing in
  the values of a distractor key.
- ``variable_tracking``: chains ``VAR X17 = 4417``, ``VAR X52 = X17``, ``VAR X88 = X52`` and a distractor chain;
  the question asks which names hold the value, so retrieving the question's words finds only the first hop.
- ``updated_fact``: a value and, later, its update; the latest must win (the old value is a candidate).
- ``paraphrase``: the question shares no content word with the fact ("Which digits open the strongbox?"
  for "The safe combination is 4417"); candidates: the values of 3 other code facts.
- ``aggregation``: sightings of animals spread over the run; "How many times was a fox seen?" (2-5).

Depth: ``early`` / ``middle`` / ``late`` place the answer-bearing statements in that band of the run's
sections (for ``updated_fact``: the update; the original comes before it); ``aggregation`` is always
``spread`` over the whole run. Seeds: see `SPLITS` (development range used while designing and tuning, a
held-out range for reported figures).
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm.events import CellOutput, CodeCell, OrchestratorMessage, RunStart, WorkerCall

from benchmarks.rlm_bench.episodes import (
    CODE_KEYS,
    DEPTHS,
    TEMPLATES,
    Episode,
    Fact,
    _chunks,
    _codes,
    essay_names,
    section_events,
)
from rlm.data import data_dir
from rlm.trajectory import Trajectory

FAMILIES = ("single_key", "multi_key", "multi_value", "variable_tracking", "updated_fact", "paraphrase", "aggregation")
CARRIERS = ("output", "worker", "note")
# Seed ranges. DEV: used while designing the families and tuning tau, smoothing and the protected window.
# HELDOUT: only for the reported figures (never looked at while designing).
SPLITS = {"dev": range(100_000), "heldout": range(1_000_000, 1_100_000)}

# Paraphrased questions for the code keys: no content word shared with "The <key> is <value>".
PARAPHRASES = {
    "safe combination": "Which digits open the strongbox?",
    "alarm code": "What number silences the burglar siren?",
    "locker number": "Which digits open the gym cabinet?",
    "wifi password": "What do you type to join the wireless network?",
    "garage code": "Which digits open the door where the car is parked?",
    "printer PIN": "Which digits unlock the machine that puts documents on paper?",
    "gate code": "Which digits open the entrance in the fence?",
    "bike lock code": "Which digits free the bicycle from its chain?",
}
STOPWORDS = {"the", "a", "an", "is", "what", "which", "do", "you", "to", "of", "in", "on", "that", "its", "where",
             "was", "are", "be", "it", "from", "who", "how", "many"}
SIGHTED = ["fox", "deer", "heron", "badger", "owl", "hare", "swan", "otter"]
PLACES = ["gate", "river", "barn", "old oak", "pond", "bridge", "orchard", "road"]


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}


@dataclass(frozen=True)
class Plan:
    """What a family plants and asks: statements (text, is_target, band) in order, and the question."""

    kind: str
    statements: list[tuple[str, bool, str]]   # band: "depth" (the episode's depth band), "before" (earlier), "any"
    question: str
    prefix: str
    answer: str
    candidates: list[str]
    keys: list[str]
    values: list[str]


def _shuffled(xs: list[str], rng: random.Random) -> list[str]:
    xs = list(xs)
    rng.shuffle(xs)
    return xs


def _plan(family: str, rng: random.Random) -> Plan:
    if family == "single_key":
        key = rng.choice(CODE_KEYS)
        v = _codes(rng, 4)
        return Plan("code", [(f"The {key} is {v[0]}", True, "depth")], f"What is the {key}?", f"The {key} is", v[0],
                    _shuffled(v, rng), [key], v[:1])
    if family == "multi_key":
        t = rng.choice(TEMPLATES)
        keys, vals = t.keys(rng, 4), t.values(rng, 4)
        st = [(t.statement.format(key=keys[0], value=vals[0]), True, "depth")]
        st += [(t.statement.format(key=k, value=v), False, "any") for k, v in zip(keys[1:], vals[1:], strict=True)]
        return Plan(t.kind, st, t.question.format(key=keys[0]), t.prefix.format(key=keys[0]), vals[0],
                    _shuffled(vals, rng), keys, vals)
    if family == "multi_value":
        k1, k2 = rng.sample(CODE_KEYS, 2)
        a, b, c, d = _codes(rng, 4)
        st = [(f"One valid {k1} is {a}", True, "depth"), (f"One valid {k1} is {b}", True, "depth"),
              (f"One valid {k2} is {c}", False, "any"), (f"One valid {k2} is {d}", False, "any")]
        right = f"{a} and {b}"
        cands = [right, f"{a} and {c}", f"{d} and {b}", f"{c} and {d}"]
        return Plan("code", st, f"What are all the valid values of the {k1}?", f"The valid values of the {k1} are",
                    right, _shuffled(cands, rng), [k1, k2], [a, b, c, d])
    if family == "variable_tracking":
        v1, v2 = _codes(rng, 2)
        names = [f"X{n}" for n in rng.sample(range(10, 100), 6)]
        a, b = names[:3], names[3:]
        st = [(f"VAR {a[0]} = {v1}", True, "depth"), (f"VAR {a[1]} = {a[0]}", True, "depth"),
              (f"VAR {a[2]} = {a[1]}", True, "depth"), (f"VAR {b[0]} = {v2}", False, "any"),
              (f"VAR {b[1]} = {b[0]}", False, "any"), (f"VAR {b[2]} = {b[1]}", False, "any")]

        def fmt(xs: list[str]) -> str:
            return f"{xs[0]}, {xs[1]} and {xs[2]}"

        right = fmt(a)
        cands = [right, fmt([a[0], b[1], b[2]]), fmt([a[0], a[1], b[2]]), fmt(b)]
        return Plan("variable", st, f"Which variables hold the value {v1}?", f"The variables that hold {v1} are",
                    right, _shuffled(cands, rng), names, [v1, v2])
    if family == "updated_fact":
        key, k2, k3 = rng.sample(CODE_KEYS, 3)
        old, new, c, d = _codes(rng, 4)
        st = [(f"The {key} is {old}", False, "before"), (f"Update: the {key} was changed. The {key} is {new}", True,
                                                         "depth"),
              (f"The {k2} is {c}", False, "any"), (f"The {k3} is {d}", False, "any")]
        return Plan("code", st, f"What is the {key} now, after the latest change?", f"The {key} is", new,
                    _shuffled([new, old, c, d], rng), [key, k2, k3], [new, old, c, d])
    if family == "paraphrase":
        keys = rng.sample(CODE_KEYS, 4)
        vals = _codes(rng, 4)
        st = [(f"The {keys[0]} is {vals[0]}", True, "depth")]
        st += [(f"The {k} is {v}", False, "any") for k, v in zip(keys[1:], vals[1:], strict=True)]
        return Plan("code", st, PARAPHRASES[keys[0]], "The answer is", vals[0], _shuffled(vals, rng), keys, vals)
    if family == "aggregation":
        animals = rng.sample(SIGHTED, 3)
        counts = rng.sample([2, 3, 4, 5], 3)
        st = []
        for i, (an, n) in enumerate(zip(animals, counts, strict=True)):
            st += [(f"Sighting: a {an} was seen near the {rng.choice(PLACES)}", i == 0, "spread") for _ in range(n)]
        return Plan("count", st, f"How many times was a {animals[0]} seen?",
                    f"The number of times a {animals[0]} was seen is", str(counts[0]), ["2", "3", "4", "5"], animals,
                    [str(n) for n in counts])
    raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")


def _sections(rng: random.Random, target_tokens: int, count_tokens: Callable[[str], int] | None,
              data: Path | None, n_statements: int = 0) -> tuple[list[str], list[str]]:
    """Essay sections (continuing into the next essay when one runs out) filling about target_tokens."""
    names = essay_names(data)
    folder = (data or data_dir()) / "pg_essays"
    size = count_tokens or (lambda s: len(s) / 4.0)
    budget = target_tokens * 1.0
    start = rng.randrange(len(names))
    sections: list[str] = []
    used: list[str] = []
    est = 120.0 + 25.0 * n_statements  # task + header + planted statements, tokens
    for i in range(len(names)):
        name = names[(start + i) % len(names)]
        used.append(name)
        for ch in _chunks(folder.joinpath(name).read_text(encoding="utf-8", errors="replace"), rng, 450, 850):
            sections.append(ch)
            est += size(ch) + 105  # chunk + message/code/worker-call scaffolding and planted statements
            if est >= budget:
                return sections, used
    return sections, used


def _steps(rng: random.Random, n_steps: int, band: tuple[float, float], k: int) -> list[int]:
    lo, hi = band
    return sorted(min(n_steps - 1, max(0, round(rng.uniform(lo, hi) * (n_steps - 1)))) for _ in range(k))


def make_family_episode(family: str, seed: int, target_tokens: int = 1000, depth: str | None = None, *,
                        count_tokens: Callable[[str], int] | None = None, data: Path | None = None) -> Episode:
    """One episode of `family`, deterministic in its arguments. `count_tokens`: the worker's tokenizer (sizes
    the filler to target_tokens; without it, 4 characters per token)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    rng = random.Random(f"rlm-bench-family:{family}:{seed}:{target_tokens}:{depth}")
    if family == "aggregation":
        depth = "spread"
    else:
        depth = depth or rng.choice(list(DEPTHS))
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {list(DEPTHS)}, got {depth!r}")
    plan = _plan(family, rng)
    sections, used = _sections(rng, target_tokens, count_tokens, data, len(plan.statements))
    n_steps = len(sections)

    # steps: depth-band statements in order within the band; "before" strictly before the first of them
    # where possible; "any"/"spread" uniform over the run.
    band_idx = [i for i, s in enumerate(plan.statements) if s[2] == "depth"]
    band_steps = _steps(rng, n_steps, DEPTHS[depth], len(band_idx)) if band_idx else []
    steps: dict[int, int] = dict(zip(band_idx, band_steps, strict=True))
    first = min(band_steps) if band_steps else n_steps - 1
    for i, (_, _, band) in enumerate(plan.statements):
        if band == "before":
            steps[i] = rng.randrange(0, max(1, first))
        elif band in ("any", "spread"):
            steps[i] = rng.randrange(n_steps)
    chain = family == "variable_tracking"
    if chain:  # each chain's hops in order (distractor chain too)
        b = [i for i, s in enumerate(plan.statements) if s[2] == "any"]
        for i, st in zip(b, sorted(steps[i] for i in b), strict=True):
            steps[i] = st
    carriers = {i: rng.choice(CARRIERS) for i in range(len(plan.statements))}
    order = {i: (steps[i], 0 if plan.statements[i][2] == "before" else 1, i if chain or plan.statements[i][2] == "depth"
                 else rng.random()) for i in steps}
    by_step: dict[int, list[int]] = {}
    for i in sorted(steps, key=lambda i: order[i]):
        by_step.setdefault(steps[i], []).append(i)

    task = ("Go through the document, collect every fact, code, variable and sighting it mentions, then answer "
            "questions.")
    traj = Trajectory(run_id=f"bench-{family}-{seed}")

    def add(e: Any) -> None:
        e.run_id, e.seq = traj.run_id, len(traj.events)
        traj.append(e, stamp=False)

    add(RunStart(query=task, context_length=sum(len(s) for s in sections), worker={"name": "worker"}))
    add(OrchestratorMessage(iteration=0, text=f"I will read the document in {n_steps} sections, ask the worker about "
                                               f"each one and keep notes of what I find."))
    calls, facts, offsets = 0, [], []
    for s, chunk in enumerate(sections):
        it = s + 1
        calls += 1
        for e in section_events(it, s, n_steps, chunk, f"{traj.run_id}.{calls}"):
            add(e)
        for i in by_step.get(s, []):
            text, target, _ = plan.statements[i]
            marker = len(traj.text)
            if carriers[i] == "output":
                add(CodeCell(iteration=it, cell=1, code="print(extract_facts(section))"))
                add(CellOutput(iteration=it, cell=1, stdout=f"Found: {text}."))
            elif carriers[i] == "worker":
                calls += 1
                add(WorkerCall(call_id=f"{traj.run_id}.{calls}", iteration=it, index=calls,
                               query=f"Does section {it} state any fact, code, variable or sighting? Quote it.",
                               answer=f"Yes: {text}.", worker="worker"))
            else:
                add(OrchestratorMessage(iteration=it, text=f"Note to self: {text}. I will need this later."))
            facts.append(Fact(key=plan.kind, value="", statement=text, carrier=carriers[i], step=s, target=target))
            if target:
                offsets.append(traj.text.index(text, marker))
    text = traj.text
    offset = (sum(offsets) / len(offsets)) / max(1, len(text)) if offsets else 0.0
    target_carriers = sorted({f.carrier for f in facts if f.target})
    return Episode(
        id=f"{family}-s{seed}-t{target_tokens}-{depth}", seed=seed, target_tokens=target_tokens, depth=depth,
        n_distractors=sum(not f.target for f in facts), kind=plan.kind, essay=used[0], task=task, trajectory=text,
        question=plan.question, answer=plan.answer, candidates=plan.candidates, answer_prefix=plan.prefix, facts=facts,
        n_steps=n_steps, fact_offset=offset, fact_carrier="+".join(target_carriers), events=list(traj.events),
        family=family)


@dataclass(frozen=True)
class EpisodeSpec:
    """A picklable recipe for one episode (what the runner ships to a process or a Ray task)."""

    family: str
    seed: int
    target_tokens: int
    depth: str | None

    def build(self, count_tokens: Callable[[str], int] | None = None, data: Path | None = None) -> Episode:
        return make_family_episode(self.family, self.seed, self.target_tokens, self.depth, count_tokens=count_tokens,
                                   data=data)


def suite_specs(lengths: list[int], per_cell: int | list[int], split: str = "heldout",
                families: tuple[str, ...] = FAMILIES, offset: int = 0) -> list[EpisodeSpec]:
    """`per_cell` episodes per (family, length) (one count, or one per length), depths cycling early/middle/late
    (shifted by one per length); seeds from `SPLITS[split]` (`offset` moves within the range)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    counts = [per_cell] * len(lengths) if isinstance(per_cell, int) else list(per_cell)
    if len(counts) != len(lengths):
        raise ValueError(f"per_cell must be one count or one per length ({len(lengths)}), got {per_cell!r}")
    base = SPLITS[split].start + offset
    depths = list(DEPTHS)
    out = []
    for fi, fam in enumerate(families):
        if fam not in FAMILIES:
            raise ValueError(f"families must be among {list(FAMILIES)}, got {fam!r}")
        for li, (n, k) in enumerate(zip(lengths, counts, strict=True)):
            for j in range(k):
                seed = base + fi * 10_000 + li * 1_000 + j
                if seed not in SPLITS[split]:
                    raise ValueError(f"offset {offset} runs past the {split} seed range {SPLITS[split]}")
                out.append(EpisodeSpec(fam, seed, n, None if fam == "aggregation" else depths[(j + li) % 3]))
    return out
