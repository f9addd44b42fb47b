"""Shared fixtures: the embedded model is loaded once per test session (converted once, cached on disk)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def lm():
    import briefing

    return briefing.load_model()


@pytest.fixture(scope="session")
def essay() -> str:
    return (DATA / "pg_essays" / "avg.txt").read_text()
