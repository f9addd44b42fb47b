"""Shared fixtures: the embedded model is loaded once per test session (converted once, cached on disk)."""
from __future__ import annotations

import pytest

from rlm.data import read_essay


@pytest.fixture(scope="session")
def lm():
    import briefing

    return briefing.load_model()


@pytest.fixture(scope="session")
def essay() -> str:
    return read_essay("avg.txt")
