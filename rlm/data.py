"""Where the shared data lives: $LATENT_BRIEFING_DATA, else <repo>/../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    env = os.environ.get("LATENT_BRIEFING_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def essay_path(name: str) -> Path:
    """An essay of pg_essays/ by file name (".txt" optional), or any existing path."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    base = data_dir() / "pg_essays"
    cand = base / (name if name.endswith(".txt") else name + ".txt")
    if not cand.is_file():
        raise FileNotFoundError(f"no essay {name!r} in {base} (set LATENT_BRIEFING_DATA to the shared data folder)")
    return cand


def read_essay(name: str, max_chars: int | None = None) -> str:
    text = essay_path(name).read_text(encoding="utf-8", errors="replace").strip()
    return text[:max_chars] if max_chars else text
