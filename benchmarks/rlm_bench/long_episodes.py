"""Episodes of the long-trajectory suite: trajectories several times the worker's window, rendered by the runtime's
own events (`rlm.events`, `rlm.trajectory.Trajectory`), with four facts to recall, each asked in two wordings.

A scripted orchestrator reads essay sections (REPL outputs), asks the worker about each one and takes notes. Four
target facts of four kinds ("The safe combination is 4417", "The piano teacher is named Mary", "The mailbox is
painted red", "The pub sign is a tiger") are planted one per quarter of the trajectory (in a REPL output, a worker
answer or a note, cycling), and two distractors of each kind (the kind's other keys, other values) anywhere. At the
end the worker is asked for each target twice (one call per question): in the fact's own words ("What is the safe
combination?") and paraphrased with no content word of the statement ("Which digits open the strongbox?",
`Key.paraphrase`, checked by `shared_words`). The candidates are the answer, the two distractors' values and one
value never planted (chance 1/4), scored by summed log-prob after the question's own lead-in ("The safe combination
is" / "The strongbox opens with"; `benchmarks.rlm_bench.conditions.choose`).

Templates are split like the seeds: the dev split's episodes use the first three keys of each kind, the held-out
split's the other three, so the held-out questions (both wordings) were never seen while choosing a default.
"""
from __future__ import annotations

import random
import re
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
FORMS = ("own", "paraphrase")
WHOLE = 0.999  # a share of a statement's characters at or above which the call's context holds it whole
# words that carry no content: shared by a question and its statement, they say nothing about which fact is meant
STOPWORDS = frozenset("a an the is are was be by of to in on at for with from into my our your me i we who what which "
                      "whose how do does did that this it its s".split())


@dataclass(frozen=True)
class Key:
    """One fact's key: its words in the statement (`key`), and the same question paraphrased with no content word of
    the statement (`paraphrase`) with the lead-in its answer follows (`lead`)."""

    key: str
    paraphrase: str
    lead: str


@dataclass(frozen=True)
class Kind:
    """A fact form. Values are one token with a leading space (names, colours, animals) or four digits (codes), so
    the candidates of a question have equal token counts. keys: six; the dev split uses the first three, the
    held-out split the other three."""

    statement: str  # "{key}", "{value}"
    question: str   # "{key}"
    lead: str       # the answer's lead-in, "{key}"
    keys: tuple[Key, ...]
    values: tuple[str, ...]


KINDS = [
    Kind("The {key} is {value}", "What is the {key}?", "The {key} is", (
        Key("safe combination", "Which digits open the strongbox?", "The strongbox opens with"),
        Key("alarm code", "What number disarms the burglar siren?", "The burglar siren is disarmed by"),
        Key("locker number", "Which digits unlock the storage cupboard at the gym?", "The gym cupboard unlocks with"),
        Key("garage code", "What do I key in to open the shed where the car is parked?",
            "The shed where the car is parked opens with"),
        Key("printer PIN", "Which digits unlock the office copying machine?",
            "The office copying machine unlocks with"),
        Key("gate code", "What number lets visitors through the driveway barrier?",
            "The driveway barrier lets visitors through with")), ()),
    Kind("The {key} is named {value}", "What is the name of the {key}?", "The {key} is named", (
        Key("new landlord", "Who owns the flat I rent?", "The owner of the flat I rent is"),
        Key("magazine editor", "Who decides which articles go into the periodical?",
            "The articles of the periodical are chosen by"),
        Key("family dentist", "Who looks after our teeth?", "Our teeth are looked after by"),
        Key("piano teacher", "Who gives the keyboard lessons?", "The keyboard lessons are given by"),
        Key("tax lawyer", "Who handles my filings with the revenue service?",
            "My filings with the revenue service are handled by"),
        Key("next-door neighbour", "Who lives in the house beside mine?", "The person living in the house beside "
            "mine is")),
     ("Peter", "John", "Mary", "Alice", "Robert", "David", "Sarah", "Michael", "Emma", "James", "Anna", "Paul")),
    Kind("The {key} is painted {value}", "What colour is the {key} painted?", "The {key} is painted", (
        Key("front door", "Which shade covers the main entrance?", "The main entrance is coloured"),
        Key("garden fence", "What hue is the wooden boundary around the backyard?",
            "The wooden boundary around the backyard is coloured"),
        Key("old bicycle", "What shade is my ancient bike?", "My ancient bike is coloured"),
        Key("mailbox", "Which hue has the box where letters arrive?", "The box where letters arrive is coloured"),
        Key("rowing boat", "Which shade does the little vessel with oars have?", "The little vessel with oars is "
            "coloured"),
        Key("delivery van", "What hue is the courier's vehicle?", "The courier's vehicle is coloured")),
     ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey")),
    Kind("The {key} is a {value}", "What animal is the {key}?", "The {key} is a", (
        Key("football team's mascot", "Which creature represents the soccer club?",
            "The soccer club is represented by a"),
        Key("hotel logo", "Which creature is drawn on the inn's branding?", "The inn's branding shows a"),
        Key("chess club emblem", "Which creature is on the badge of the board-game society?",
            "The badge of the board-game society shows a"),
        Key("pub sign", "Which creature is pictured outside the tavern?", "Outside the tavern is pictured a"),
        Key("garden statue", "Which creature is the sculpture among the flowerbeds?",
            "The sculpture among the flowerbeds is a"),
        Key("company flag", "Which creature is on the firm's banner?", "The firm's banner shows a")),
     ("horse", "tiger", "eagle", "rabbit", "wolf", "bear", "snake", "mouse", "whale", "shark", "lion", "zebra")),
]
SPLIT_KEYS = {"dev": slice(0, 3), "heldout": slice(3, 6)}


def content_words(text: str) -> set[str]:
    """The words of `text` that carry content (lower case, no stopwords)."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}


def shared_words(a: str, b: str) -> set[str]:
    """Content words `a` and `b` share (a paraphrase and its statement share none)."""
    return content_words(a) & content_words(b)


@dataclass
class Question:
    key: str
    answer: str
    quarter: int
    offset: float   # character offset of the statement / trajectory length
    question: str   # "What is the safe combination?" / "Which digits open the strongbox?"
    lead: str       # the answer's lead-in ("The safe combination is" / "The strongbox opens with")
    candidates: list[str]  # the answer, the two same-kind distractors' values and one value never planted
    statement: str = ""    # the planted fact ("The safe combination is 4417")
    form: str = "own"      # "own": in the statement's words; "paraphrase": no content word shared with it
    fact: int = 0          # which of the episode's four facts (both forms of a fact share it)
    distractors: tuple[str, ...] = ()   # the two same-kind distractors' statements ("The garden fence is painted
    #                                     green"): the candidates a worker must tell the fact from


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


def make_long_episode(seed: int, target_tokens: int, chars_per_token: float = 4.1, *,
                      split: str | None = None) -> LongEpisode:
    """One episode of about `target_tokens` tokens, deterministic from (seed, target_tokens).

    Four target facts of four kinds (a code, a name, a colour, an animal), one per quarter in shuffled kind order;
    two distractors of each kind (the kind's other keys of the split, other values) anywhere. Each target is asked
    in its own words and paraphrased (eight questions); a question's candidates are its value, its distractors'
    values and one value of that kind never planted (chance 1/4). split: whose keys ("dev" or "heldout"; None: the
    split the seed belongs to)."""
    split = split if split is not None else ("heldout" if seed >= SPLIT_SEED["heldout"] else "dev")
    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {sorted(SPLIT_KEYS)}, got {split!r}.")
    rng = random.Random(f"rlm-long:{seed}:{target_tokens}")
    sections = _sections(rng, int(target_tokens * chars_per_token))
    n = len(sections)
    kinds = rng.sample(KINDS, 4)
    facts = []  # (kind, key, value, quarter or 0, candidate values)
    for qt, kind in enumerate(kinds, start=1):
        keys = rng.sample(kind.keys[SPLIT_KEYS[split]], 3)
        pool = _codes(rng, 4) if not kind.values else rng.sample(kind.values, 4)
        facts.append((kind, keys[0], pool[0], qt, pool))
        facts += [(kind, keys[d], pool[d], 0, pool) for d in (1, 2)]
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
            statement = kind.statement.format(key=key.key, value=value)
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
            cands = sorted(pool, key=lambda v: random.Random(f"{seed}:{key.key}:{v}").random())
            statement = kind.statement.format(key=key.key, value=value)
            distractors = tuple(kind.statement.format(key=k.key, value=v) for _, k, v, _, _ in facts[j + 1:j + 3])
            for form, question, lead in (("own", kind.question.format(key=key.key), kind.lead.format(key=key.key)),
                                         ("paraphrase", key.paraphrase, key.lead)):
                questions.append(Question(key.key, value, qt, offsets[j] / total, question, lead, cands, statement,
                                          form, qt - 1, distractors))
    return LongEpisode(f"long-s{seed}-t{target_tokens}", seed, target_tokens, task, chunks, questions)


def question_event(q: Question, i: int) -> str:
    """Text the orchestrator adds before asking about a fact (so each final call has new tokens to extend by); it
    names no word of the question, so a paraphrase stays a paraphrase."""
    return f"[orchestrator]\nAll sections read. Question {i + 1}: I ask the worker.\n\n"


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
        return make_long_episode(self.seed, self.target_tokens, split=self.split)
