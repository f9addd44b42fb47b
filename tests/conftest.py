"""Shared fixtures. Two tiers: `make test-fast` (-m "not slow") loads no real model; the embedded model is loaded
once per session, and only by tests marked `slow` (a test that reaches the `lm` fixture unmarked fails)."""
from __future__ import annotations

import pytest

from rlm.data import read_essay


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "lm" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} loads the embedded model: mark it @pytest.mark.slow, or use the `tok` fixture "
                    "(a BPE tokenizer) with a tiny random model (tests.tiny)", pytrace=False)


@pytest.fixture(autouse=True)
def _fast_tier_loads_no_real_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a test not marked slow, reaching a real model's weights fails (in this process), whatever the path."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import briefing.model

    found = briefing.model.known_gguf

    def refuse(known, *args, **kwargs):
        found(known, *args, **kwargs)   # a model that is not installed still raises its own error
        pytest.fail(f"{request.node.nodeid} loads the real model {known.name}: mark it @pytest.mark.slow, or pass a "
                    "tiny random model (tests.tiny)", pytrace=False)

    monkeypatch.setattr(briefing.model, "known_gguf", refuse)


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


@pytest.fixture(scope="module")
def tiny(tok):
    """A tiny random llama-gqa model (512 positions) on the `tok` tokenizer."""
    from tests.tiny import tiny_model

    return tiny_model("llama-gqa", tok, max_positions=512)


@pytest.fixture(scope="module")
def pieces(essay):
    """Pieces of about 30 words, each cut just before a space and a letter (no BPE merge across the cuts)."""
    import re

    words = re.split(r"(?= [A-Za-z])", essay)
    return ["".join(words[i:i + 30]) for i in range(0, len(words), 30)]
