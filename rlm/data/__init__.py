"""The data the demo, tests and benchmarks use, shipped inside the package (see README.md here).

`data_dir()` is the one place that locates it: `$LATENT_BRIEFING_DATA` when set (a folder with the same
layout: `pg_essays/*.txt`, `rlm-trace-log-example.jsonl`), else this package folder.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent


def data_dir() -> Path:
    env = os.environ.get("LATENT_BRIEFING_DATA")
    if not env:
        return PACKAGE_DATA
    path = Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"LATENT_BRIEFING_DATA={env!r} is not a folder: unset it to use the data shipped "
                                f"with the package, or point it at a folder holding pg_essays/.")
    return path


def essay_names() -> list[str]:
    """File names of the shipped essays, sorted."""
    return sorted(p.name for p in (data_dir() / "pg_essays").glob("*.txt"))


def essay_path(name: str) -> Path:
    """An essay of pg_essays/ by file name (".txt" optional), or any existing path."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    base = data_dir() / "pg_essays"
    cand = base / (name if name.endswith(".txt") else name + ".txt")
    if not cand.is_file():
        raise FileNotFoundError(f"no essay {name!r} in {base}: pass a file path or one of the names that "
                                f"rlm.data.essay_names() lists.")
    return cand


def read_essay(name: str, max_chars: int | None = None) -> str:
    text = essay_path(name).read_text(encoding="utf-8", errors="replace").strip()
    return text[:max_chars] if max_chars else text
