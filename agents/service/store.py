"""One replica's state: the trajectory caches it holds, least recently used first, under a byte budget.

`TrajectoryStore.call(request)` runs the protocol of `agents.service.protocol` on one replica (no Ray here: the
Serve deployment in `agents.service.app` calls it from its model thread, one request at a time). Each trajectory
is held by its own `BriefedWorker` (one cache), forked from one template worker so that every trajectory of the
replica shares the one loaded model; a request syncs that worker's cache to the whole text (only the new text is
prefilled) and answers with `answer` (or `answer_batch` for a batch), exactly as an in-process `BriefedWorker` does.

The budget counts the bytes of the held caches as `briefing.TrajectoryCache.held_bytes()` measures them (keys,
values and the stored beta of every layer, and the archive of what the folds compacted away that the default
`RoutedRecall` keeps); the text, token ids and fold guidance of each trajectory come on top
(bounded, and small next to the cache). Before a sync, caches of other trajectories are evicted until the
projected size fits (the new tokens times the bytes per position the replica's caches measure); after it, until the
measured size fits. A trajectory whose cache alone is over the budget is dropped with a 413.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.service.protocol import (EMPTY_SHA256, AnswerItem, CallReply, CallRequest, ReplicaStats, ServiceError,
                                     sha256)
from agents.workers.base import WorkerAnswer
from briefing.options import check_int, check_type

if TYPE_CHECKING:
    import briefing
    from agents.workers.briefed import BriefedWorker

GiB = 2 ** 30
MiB = 2 ** 20
# BriefedWorker options a service may set for every trajectory (the model, device and dtype are the service's own)
WORKER_OPTIONS = ("selector", "max_new_tokens", "temperature", "stop", "header", "fold", "cache_budget", "reserve",
                  "recall")


@dataclass(kw_only=True)
class ServiceConfig:
    """What every replica of a briefed-worker service runs.

    model / device / dtype: the worker model (`briefing.load_model`: a known name, a local Hugging Face directory or
        None for the embedded default), loaded once per replica. lm: a loaded `briefing.LoadedModel` to serve instead
        (copied to each replica; tests use tiny random models).
    cache_bytes: bytes each replica's caches (KV and archive: `TrajectoryCache.held_bytes`) may hold together (>= 1).
        max_trajectories: caches a replica holds at most, whatever their size (>= 1). max_request_bytes: the largest
        request body a replica reads (413 past it).
    threads: torch CPU threads per replica (None: torch's choice).
    worker: `BriefedWorker` options for every trajectory (keys of WORKER_OPTIONS, e.g. max_new_tokens, selector,
        reserve, cache_budget).
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    lm: Any = None
    cache_bytes: int = 2 * GiB
    max_trajectories: int = 256
    max_request_bytes: int = 16 * MiB
    threads: int | None = None
    worker: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = "ServiceConfig"
        check_int(owner, "cache_bytes", self.cache_bytes, low=1, what="bytes of caches (KV and archive) per replica",
                  error=ValueError)
        check_int(owner, "max_trajectories", self.max_trajectories, low=1, error=ValueError)
        check_int(owner, "max_request_bytes", self.max_request_bytes, low=1024, error=ValueError)
        check_int(owner, "threads", self.threads, low=1, none=True, error=ValueError)
        check_type(owner, "worker", self.worker, dict, "a dict of BriefedWorker options", error=ValueError)
        unknown = sorted(set(self.worker) - set(WORKER_OPTIONS))
        if unknown:
            raise ValueError(f"{owner}: worker has options a service cannot set: {', '.join(unknown)}; choose from "
                             f"{', '.join(WORKER_OPTIONS)} (the model, device and dtype are the service's own).")
        if self.lm is not None:
            import briefing

            check_type(owner, "lm", self.lm, briefing.LoadedModel, "a briefing.LoadedModel or None (load `model`)",
                       none=True, error=ValueError)
        from agents.workers.briefed import BriefedWorker

        BriefedWorker(**self.worker)   # the options' own checks, now rather than on every replica


@dataclass
class _Held:
    """One trajectory on this replica: its worker (one cache), the text it holds and that text's running hash."""

    worker: BriefedWorker
    text: str = ""
    digest: Any = field(default_factory=hashlib.sha256)
    cache_bytes: int = 0

    def sha(self) -> str:
        return self.digest.hexdigest()

    def extend(self, text: str) -> None:
        self.digest.update(text[len(self.text):].encode("utf-8"))
        self.text = text


class TrajectoryStore:
    """The trajectories of one replica (see the module doc). `load()` loads the model (the first call does too)."""

    def __init__(self, config: ServiceConfig, replica: str = "local") -> None:
        self.config = config
        self.replica = replica
        self.held: OrderedDict[str, _Held] = OrderedDict()   # least recently used first
        self.stats = ReplicaStats(replica=replica, pid=os.getpid(), budget_bytes=config.cache_bytes)
        self._template: BriefedWorker | None = None
        self._per_position = 0.0                             # KV bytes per cached position, as measured

    # -- the model ----------------------------------------------------------------------------------------------

    def load(self) -> BriefedWorker:
        """The template worker, on the model loaded once (every trajectory's worker is a fork of it)."""
        if self._template is None:
            from agents.workers.briefed import BriefedWorker

            c = self.config
            if c.threads:
                import torch

                torch.set_num_threads(c.threads)
            lm = c.lm
            if lm is None:
                import briefing

                lm = briefing.load_model(c.model, device=c.device, dtype=c.dtype)
            else:   # a model copied into this process: its attention is registered here too
                from briefing.attention import register_attention

                register_attention()
            template = BriefedWorker(lm=lm, **c.worker)
            template.prompts()
            self._template = template
        return self._template

    @property
    def lm(self) -> briefing.LoadedModel:
        return self.load().model()

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**self.load().describe(), "replica": self.replica, "cache_bytes": c.cache_bytes,
                "max_trajectories": c.max_trajectories, "max_request_bytes": c.max_request_bytes}

    # -- requests -----------------------------------------------------------------------------------------------

    def call(self, req: CallRequest) -> CallReply:
        """Run one request (see agents.service.protocol); a refusal is a ServiceError and changes nothing."""
        t0 = time.monotonic()
        self.stats.requests += 1
        try:
            return self._call(req, t0)
        except ServiceError as e:
            e.replica = self.replica
            counter = {"unknown_trajectory": "misses", "behind": "behind", "conflict": "conflicts",
                       "worker_error": "failures"}.get(e.code, "rejected")
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            raise

    def _call(self, req: CallRequest, t0: float) -> CallReply:
        tid = req.trajectory_id
        held = self.held.get(tid)
        text, outcome = self._extended(held, req)
        if held is None:
            held = _Held(worker=self.load().fork())
        self.held[tid] = held
        self.held.move_to_end(tid)
        evicted = self._make_room(tid, held, text)
        # the answers sync the cache themselves, as in-process (their BriefingStats count the prefill they did)
        answers = self._answers(held.worker, req, text) if req.queries else []
        try:
            cache = held.worker.sync(text)      # a no-op after the answers; the prefill of an append-only request
        except Exception as e:
            self.held.pop(tid, None)            # a half-extended cache is not kept: the next request rebuilds it
            raise ServiceError(422, "worker_error", f"the worker could not hold trajectory {tid!r}: "
                               f"{type(e).__name__}: {e}") from e
        held.extend(text)
        held.cache_bytes = cache.held_bytes()
        if cache.length:
            self._per_position = held.cache_bytes / cache.length
        if held.cache_bytes > self.config.cache_bytes:
            self.held.pop(tid)
            raise ServiceError(413, "cache_too_large",
                               f"trajectory {tid!r} needs {held.cache_bytes:,} bytes of KV cache and archive, "
                               f"more than this replica's budget of {self.config.cache_bytes:,} bytes: raise the "
                               "budget (rlm serve-worker --cache-bytes), give the worker a smaller cache_budget "
                               "(positions) so that its cache folds sooner, or a recall with a smaller archive "
                               "(briefing.ArchivePolicy(budget_bytes=...)) or none (TextRecall)")
        evicted += self._evict_past_budget(tid)
        self.stats.new += outcome == "new"
        self.stats.hits += outcome == "hit"
        self.stats.rebuilt += outcome == "rebuilt"
        total = self.bytes()
        self.stats.cache_bytes, self.stats.trajectories = total, len(self.held)
        self.stats.peak_bytes = max(self.stats.peak_bytes, total)
        return CallReply(trajectory_id=tid, length=len(held.text), sha256=held.sha(), replica=self.replica,
                         outcome=outcome, answers=answers, handled_s=time.monotonic() - t0,
                         cache_bytes=held.cache_bytes, replica_bytes=total, budget_bytes=self.config.cache_bytes,
                         evicted=evicted, trajectories=len(self.held))

    def _extended(self, held: _Held | None, req: CallRequest) -> tuple[str, str]:
        """The whole text after this request, and the outcome; a ServiceError when the request does not extend
        what the replica holds."""
        tid = req.trajectory_id
        if held is None:
            if req.offset > 0:
                raise ServiceError(404, "unknown_trajectory",
                                   f"this replica holds no trajectory {tid!r} (never sent here, evicted, or the "
                                   "replica restarted): send the whole text from offset 0")
            if req.prefix_sha256 != EMPTY_SHA256:
                raise ServiceError(409, "conflict", "offset 0 with a prefix_sha256 that is not the SHA-256 of "
                                   "the empty text: send the hash of the first `offset` characters")
            return req.text, "rebuilt" if req.rebuild else "new"
        n = len(held.text)
        if req.offset > n:
            raise ServiceError(409, "behind", f"this replica holds {n} characters of trajectory {tid!r}, not "
                               f"{req.offset}: send the text from offset {n}", length=n, sha256=held.sha())
        prefix = held.sha() if req.offset == n else sha256(held.text[:req.offset])
        if prefix != req.prefix_sha256 or not req.text.startswith(held.text[req.offset:]):
            raise ServiceError(409, "conflict",
                               f"the text does not extend trajectory {tid!r} as this replica holds it (its first "
                               f"{req.offset} characters differ, or it rewrites held text): a trajectory is "
                               "append-only; start a new trajectory id for another text")
        return held.text[:req.offset] + req.text, "hit"

    def _answers(self, worker: BriefedWorker, req: CallRequest, text: str) -> list[AnswerItem]:
        if req.batch:
            results: list[WorkerAnswer | Exception] = worker.answer_batch(list(req.queries), text)
        else:
            results = []
            for query in req.queries:
                try:
                    results.append(worker.answer(query, text))
                except Exception as e:   # this query's failure, reported in its place
                    results.append(e)
        return [AnswerItem(error=f"{type(r).__name__}: {r}") if isinstance(r, Exception) else AnswerItem(answer=r)
                for r in results]

    def drop(self, trajectory_id: str) -> bool:
        """Forget a trajectory (its cache is freed); whether this replica held it."""
        held = self.held.pop(trajectory_id, None)
        self.stats.cache_bytes, self.stats.trajectories = self.bytes(), len(self.held)
        return held is not None

    # -- the budget ---------------------------------------------------------------------------------------------

    def bytes(self) -> int:
        """KV bytes of every held cache (each as measured after its last request)."""
        return sum(h.cache_bytes for h in self.held.values())

    def _evict(self, keep: str) -> bool:
        """Evict the least recently used trajectory other than `keep`; False when there is none."""
        for tid in self.held:
            if tid != keep:
                del self.held[tid]
                self.stats.evictions += 1
                return True
        return False

    def _make_room(self, tid: str, held: _Held, text: str) -> int:
        """Before a sync: evict other trajectories until this one's projected cache fits beside them (and until
        at most max_trajectories are held)."""
        evicted = 0
        while len(self.held) > self.config.max_trajectories and self._evict(tid):
            evicted += 1
        if not self._per_position:
            return evicted
        lm = self.lm
        new_tokens = lm.count_tokens(text[len(held.text):]) if len(text) > len(held.text) else 0
        grown = held.cache_bytes + new_tokens * self._per_position
        projected = min(grown, lm.max_context * self._per_position)
        while self.bytes() - held.cache_bytes + projected > self.config.cache_bytes and self._evict(tid):
            evicted += 1
        return evicted

    def _evict_past_budget(self, tid: str) -> int:
        evicted = 0
        while self.bytes() > self.config.cache_bytes and self._evict(tid):
            evicted += 1
        return evicted
