"""What the local-model workers share: lazy model loading, generation settings, and `Briefing`, the public handle
on one call's context (what the worker answers on), which `brief()` returns.

`answer()` is `brief()` then `Briefing.generate()`; replays and benchmarks use the handle instead of the workers'
internals: score candidate answers (`loglikelihood`), inspect what the call kept or recalled.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.recall import Recalled
from agents.workers.base import BriefingStats
from agents.workers.prompt import WorkerPrompt
from briefing.options import check_type

if TYPE_CHECKING:  # briefing imports torch: only at run time, lazily
    import briefing


@dataclass
class Briefing:
    """One call's context. context: the `briefing.CompactedCache` the worker answers on (the call prompt already
    forwarded). input_tokens: what the call bills as input; text_handoff_tokens: what pasting the trajectory as text
    would have cost. stats: what a briefed worker's cache did (None for a text or plain worker). recalled: what a
    recall brought back (its ranges index the trajectory's characters). pasted: character ranges of the trajectory
    the context holds as text (a text worker's, after its cut). cache / offset: a briefed worker's persistent cache
    and where the trajectory starts in its text. origins: the token index of every slot the context's kept
    positions index ([layers, kv_heads, slots]; None: the cache's own slots), set when recalled keys and values were
    attached after the cache's. held_origins / spans: the cache's slots' tokens and its tokens' character spans at
    the call (a briefed worker sets them), so that `coverage` and `held` describe this call after the cache has moved
    on (None: read from the cache now). chars: the trajectory's length in characters at the call (None: unknown),
    the bound of a range `coverage` and `held` take."""

    context: briefing.CompactedCache
    query: str
    input_tokens: int
    text_handoff_tokens: int
    stats: BriefingStats | None = None
    recalled: Recalled = field(default_factory=Recalled)
    pasted: list[tuple[int, int]] = field(default_factory=list)
    cache: briefing.TrajectoryCache | None = field(default=None, repr=False)
    offset: int = 0
    origins: Any = field(default=None, repr=False)
    held_origins: Any = field(default=None, repr=False)
    spans: list[tuple[int, int]] | None = field(default=None, repr=False)
    chars: int | None = None

    def generate(self, config: briefing.GenerationConfig | None = None) -> briefing.GenerationResult:
        """Decode the answer (the context stays reusable)."""
        import briefing

        return briefing.generate(self.context, config)

    def loglikelihood(self, options: str | list[str]) -> float | list[float]:
        """Summed log-probability of each continuation (one string: one float)."""
        import briefing

        if isinstance(options, str):
            return briefing.loglikelihood(self.context, options)
        check_type("Briefing.loglikelihood", "options", options, (list, tuple), "a string or a list of strings")
        for i, o in enumerate(options):
            check_type("Briefing.loglikelihood", f"options[{i}]", o, str, "a string")
        return [briefing.loglikelihood(self.context, o) for o in options]

    def coverage(self, start: int, stop: int) -> float:
        """Share of the trajectory's characters in [start, stop) whose tokens this call's context holds: kept by the
        compaction (averaged over layers and KV heads; recalled keys and values re-attached are kept), recalled as
        text, or pasted as text. 0 for a plain worker."""
        start, stop = self._check_range("coverage", start, stop)
        return self._share(start, stop, self.context.positions if self.cache is not None else None)

    def held(self, start: int, stop: int) -> float:
        """Share of the characters in [start, stop) whose tokens the persistent cache still holds, whatever this call
        kept (averaged over layers and KV heads): what the folds left of them. 0 without a cache."""
        start, stop = self._check_range("held", start, stop)
        if self.cache is None:
            return 0.0
        return self._share(start, stop, "store")

    def _check_range(self, method: str, start: object, stop: object) -> tuple[int, int]:
        """[start, stop): integer character offsets (any integer type) with 0 <= start < stop <= the trajectory's length
        (where known), as ints."""
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise TypeError(f"Briefing.{method}: {name} must be an integer character offset into the trajectory, "
                                f"got {type(value).__name__} {value!r}.")
        start, stop = operator.index(start), operator.index(stop)
        end = "" if self.chars is None else f" <= {self.chars} (the trajectory's length)"
        if not 0 <= start < stop or (self.chars is not None and stop > self.chars):
            raise ValueError(f"Briefing.{method}: [start, stop) must be a non-empty character range of the trajectory, "
                             f"0 <= start < stop{end}; got [{start}, {stop}).")
        return start, stop

    def _share(self, start: int, stop: int, kept) -> float:
        import torch

        n = stop - start
        text = torch.zeros(n, dtype=torch.bool)                                    # [n] chars held as text
        if kept != "store":
            for a, b in [*self.pasted, *self.recalled.pasted]:
                lo, hi = max(a, start), min(b, stop)
                if lo < hi:
                    text[lo - start:hi - start] = True
        if kept is None:
            return float(text.float().mean())
        cache = self.cache
        spans = self.spans if self.spans is not None else cache.token_spans()   # no tokenisation of the text per call
        inside = [(i, max(a - self.offset, start), min(b - self.offset, stop)) for i, (a, b) in enumerate(spans)
                  if a - self.offset < stop and b - self.offset > start]
        if not inside:
            return float(text.float().mean())
        tok = torch.tensor([i for i, _, _ in inside])                              # [k] token indices
        stored = self.held_origins if self.held_origins is not None else cache.origins()   # [L, H, length]
        slots = self.origins if self.origins is not None and kept != "store" else stored
        origins = slots.cpu()                                                      # [L, H, slots] token per slot
        if kept == "store":
            held = origins
        else:   # a global allocation's padded slots (-1) hold no token
            kept = kept.cpu()
            held = origins.gather(-1, kept.clamp_min(0)).masked_fill(kept < 0, -1)  # [L, H, t] tokens kept
        has = (held.unsqueeze(-1) == tok).any(dim=-2)                              # [L, H, k]
        chars = torch.zeros(has.shape[:2] + (n,), dtype=torch.bool)                # [L, H, n]
        for j, (_, lo, hi) in enumerate(inside):
            chars[..., lo - start:hi - start] |= has[..., j:j + 1]
        return float((chars | text).float().mean())


class LocalModelMixin:
    lm: briefing.LoadedModel | None
    header: str
    max_new_tokens: int
    temperature: float
    stop: list[str]
    device: str = "auto"
    dtype: str = "auto"

    def model(self) -> briefing.LoadedModel:
        """`lm`, or the embedded default loaded on first use on `device` in `dtype`."""
        if self.lm is None:
            import briefing

            self.lm = briefing.load_model(device=self.device, dtype=self.dtype)
        return self.lm

    def prompts(self) -> WorkerPrompt:
        cached = getattr(self, "_prompts", None)
        if cached is None:
            cached = WorkerPrompt.for_model(self.model(), **self._prompt_overrides())
            self._prompts = cached
        return cached

    def _prompt_overrides(self) -> dict[str, str]:
        return {"header": self.header} if self.header is not None else {}   # "" is a header too: none at all

    def gen_config(self) -> briefing.GenerationConfig:
        import briefing

        return briefing.GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                         top_p=1.0, stop=list(self.stop), seed=0)

    def describe_model(self) -> dict[str, str]:
        """What the run log says of the model: its name, device, dtype and the prompt format the worker used."""
        lm = self.model()
        return {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
                "prompt_format": lm.prompt_format}

    def count(self, text: str) -> int:
        return int(self.model().count_tokens(text))
