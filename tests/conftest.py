"""Shared fixtures. Two tiers: `make test-fast` (-m "not slow") loads no real model; the embedded model is loaded
once per session, and only by tests marked `slow` (a test that reaches the `lm` fixture unmarked fails)."""
from __future__ import annotations

import pytest

from rlm.data import read_essay


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "lm" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} loads the embedded model: mark it @pytest.mark.slow, or use the `tok` fixture "
                    "(a BPE tokenizer) with a tiny random model (tests.tiny)", pytrace=False)


@pytest.fixture(scope="session")
def lm():
    """The embedded SmolLM2-135M, loaded once: for tests marked slow only (the fast tier loads no real model)."""
    import briefing

    return briefing.load_model()


@pytest.fixture(scope="session")
def tok():
    """A byte-level BPE tokenizer with a ChatML template, trained in memory (tests.tiny.bpe_tokenizer)."""
    from tests.tiny import bpe_tokenizer

    return bpe_tokenizer()


@pytest.fixture(scope="session")
def essay() -> str:
    return read_essay("avg.txt")
