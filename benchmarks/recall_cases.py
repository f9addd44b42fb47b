"""Held-out material for selection: questions whose answer lives AFTER the words they name.

Kinds, generated with a seed from essays in `rlm.data` (avg.txt, the anchor's essay, is never used):
- continuation: the first words of a sentence from the middle are quoted; the answer is how it goes on;
- verbatim: a few words from inside a sentence are quoted; the answer is the whole sentence;
- multi_span: the starts of two sentences far apart are quoted; the answer continues both;
- keywords (a paraphrase proxy): three content words of a sentence, alphabetised, no span quoted; the
  answer is the sentence;
- number / name (exact values): the words before a number (or a capitalised name inside a sentence) from the
  middle are quoted; the answer is the number (name) and the words after it.
Each essay gives one case of the first four kinds in turn and one verbatim-recall case (continuation, number,
name in turn; `RECALL_KINDS`). Each essay is cut to about `tokens` tokens at a sentence end. The dev split
(tuning, 8 essays) and the held-out split (reported figures, 12 essays) use distinct essays.
"""
from __future__ import annotations

import random
import re

from pydantic import BaseModel

from rlm.data import essay_names, read_essay

KINDS = ("continuation", "verbatim", "multi_span", "keywords")
RECALL_KINDS = ("continuation", "number", "name")
SEED = 12
PER_SPLIT = 8
HELDOUT_ESSAYS = 12
EXCLUDED = {"avg.txt"}  # the anchor's essay


class Case(BaseModel):
    essay: str
    kind: str
    text: str
    question: str
    answer: str


MIN_CHARS = 5500  # long enough for ~1,100 tokens


def split_essays(seed: int = SEED, per_split: int = PER_SPLIT) -> dict[str, list[str]]:
    """Dev: the first `per_split` essays of a seeded shuffle; held-out: the next HELDOUT_ESSAYS (its first
    `per_split` are the held-out split of earlier rounds)."""
    names = sorted(n for n in essay_names() if n not in EXCLUDED and len(read_essay(n)) >= MIN_CHARS)
    random.Random(seed).shuffle(names)
    return {"dev": names[:per_split], "heldout": names[per_split:per_split + max(per_split, HELDOUT_ESSAYS)]}


def _sentences(text: str) -> list[tuple[int, str]]:
    """(start offset, sentence) for sentences of plain prose (12 to 45 words, no quotes or line breaks)."""
    out = []
    for m in re.finditer(r"[A-Z][^.!?\n]*[.!?]", text):
        s = m.group(0)
        if 12 <= len(s.split()) <= 45 and '"' not in s:
            out.append((m.start(), s))
    return out


def normalise(essay: str) -> str:
    """Unwrap the hard-wrapped lines, restore the paragraph breaks lost in the scrape ("end.Next"), one space
    between words: so an answer written as words joined by spaces is the text's own token sequence."""
    text = re.sub(r"\s+", " ", essay.strip())
    return re.sub(r"([.!?)])([A-Z])", r"\1\n\n\2", text)


def _cut(lm, essay: str, tokens: int) -> str:
    body = normalise(essay)
    ids = lm.encode(body)[:tokens]
    text = lm.decode(ids)
    end = max(text.rfind(". "), text.rfind(".\n"))
    return text[: end + 1] if end > 0 else text


def _value(mid: list[tuple[int, str]], kind: str, rng: random.Random) -> tuple[str, str, list[str]] | None:
    """A number (digits) or a capitalised name inside a sentence of `mid`: (the 5 words before it, it, the 5 words
    after it), or None."""
    found = []
    for _, s in mid:
        words = s.split()
        for i in range(5, len(words) - 1):
            w = words[i].strip(",;:().!?")
            if kind == "number" and any(ch.isdigit() for ch in w):
                found.append((" ".join(words[i - 5:i]), words[i], words[i + 1:i + 6]))
            elif kind == "name" and w[:1].isupper() and w.isalpha() and len(w) > 2 and w != "I":
                found.append((" ".join(words[i - 5:i]), words[i], words[i + 1:i + 6]))
    return rng.choice(found) if found else None


def make_case(lm, essay: str, kind: str, rng: random.Random, tokens: int) -> Case:
    return make_case_text(_cut(lm, read_essay(essay), tokens), essay, kind, rng)


def make_case_text(text: str, essay: str, kind: str, rng: random.Random) -> Case:
    mid = [(o, s) for o, s in _sentences(text) if 0.15 * len(text) < o < 0.85 * len(text)]
    if len(mid) < 2:
        raise ValueError(f"{essay}: too few prose sentences in the middle of the text")
    o, s = rng.choice(mid)
    words = s.split()
    if kind == "continuation":
        question = (f'In the text above, the sentence that begins "{" ".join(words[:6])}" goes on how? '
                    "Give the words that follow.")
        answer = " " + " ".join(words[6:18])
    elif kind == "verbatim":
        at = rng.randrange(3, max(4, len(words) - 6))
        question = f'Quote the sentence of the text above that contains the words "{" ".join(words[at:at + 4])}".'
        answer = " " + " ".join(words[:18])
    elif kind == "multi_span":
        far = [(o2, s2) for o2, s2 in mid if abs(o2 - o) > 0.25 * len(text)] or [x for x in mid if x[1] != s]
        o2, s2 = rng.choice(far)
        (_, a), (_, b) = sorted([(o, s), (o2, s2)])
        wa, wb = a.split(), b.split()
        question = (f'Two sentences of the text above begin "{" ".join(wa[:5])}" and "{" ".join(wb[:5])}". '
                    "Continue both.")
        answer = " 1. " + " ".join(wa[5:13]) + " 2. " + " ".join(wb[5:13])
    elif kind in ("number", "name"):
        found = _value(mid, kind, rng)
        if found is None:   # no such value in the middle of this essay: a continuation instead
            return make_case_text(text, essay, "continuation", rng)
        before, value, after = found
        what = "number" if kind == "number" else "name"
        question = f'In the text above, which {what} comes right after the words "{before}"? Give it and the words ' \
                   "that follow."
        answer = " " + " ".join([value] + after)
    elif kind == "keywords":
        content = sorted({w.strip(",;:().!?").lower() for w in words if len(w.strip(",;:().!?")) >= 6},
                         key=lambda w: (len(w), w))[-3:]   # (len, word): the same three whatever the hash seed
        question = f"Which sentence of the text above uses the words {', '.join(sorted(content))}? Repeat it."
        answer = " " + " ".join(words[:18])
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return Case(essay=essay, kind=kind, text=text, question=f"\n\nQuestion: {question} Answer:", answer=answer)


def cases(lm, split: str, tokens: int = 1100, seed: int = SEED, per_split: int = PER_SPLIT,
          recall: bool = True) -> list[Case]:
    """The cases of `split` ("dev" or "heldout"): per essay one case of KINDS in turn, then (recall) one
    verbatim-recall case of RECALL_KINDS in turn, each named "recall:<kind>"."""
    essays = split_essays(seed, per_split)[split]
    rng = random.Random(f"{seed}-{split}")
    out = [make_case(lm, e, KINDS[i % len(KINDS)], rng, tokens) for i, e in enumerate(essays)]
    if recall:
        rng = random.Random(f"{seed}-{split}-recall")
        for i, e in enumerate(essays):
            case = make_case(lm, e, RECALL_KINDS[i % len(RECALL_KINDS)], rng, tokens)
            out.append(case.model_copy(update={"kind": f"recall:{case.kind}"}))
    return out
