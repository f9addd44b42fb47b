"""RemoteBriefedWorker: a `BriefedWorker` whose caches live in a briefed-worker service (`rlm serve-worker`).

An orchestrator uses it exactly like `BriefedWorker`: `answer(query, trajectory)` returns the replica's
`WorkerAnswer` (the same text, token accounting and `BriefingStats` as an in-process `BriefedWorker` on the same
model), so the runtime logs the same worker-call events. Only `latency_s` is the client's: the request's round trip.

Per call it sends only what the service does not hold yet. Like `BriefedWorker` picking a warm cache, it picks
the trajectory (an id it made, a random hex string) whose text is the longest prefix of the call's trajectory,
and sends the new text from there with the SHA-256 of the prefix; a trajectory that no call extends gets a new id.
The id is Ray Serve's multiplexed model id, so the request goes to the replica that holds that cache. When it
does not (affinity is best-effort, a replica evicted or restarted), the replica answers 404 and the client sends
the whole text, from which the replica rebuilds the cache; a replica holding an older copy says how much it
holds and gets the rest; a replica holding another text under the id (a request of someone else's with it) makes
the client move the trajectory to a new id, rebuilt from the whole text (the client's text is the truth).
`answer_batch` sends the batch as one request, answered on the replica by `BriefedWorker.answer_batch`.

Failures: a replica that died or a proxy that did not answer is retried (`retries` times, waits `backoff_s` *
2**attempt) with the whole text, so that a live replica rebuilds the cache; then `ServiceUnavailable` (a
`BackendError`: the run stops calling the worker). A refusal (4xx) raises `ServiceError` with the service's
one-line reason; a query the worker failed raises `RemoteWorkerError` (in its place in a batch).

Parameters:
    url: the service's HTTP address through Serve's proxy (as `rlm serve-worker` prints it,
        e.g. http://127.0.0.1:8000/briefed): what an orchestrator on another machine uses (no Ray needed here)
    app: or the Serve application's name (default of `rlm serve-worker`: "briefed-worker"), reached through
        deployment handles from a driver inside the Ray cluster; address: the cluster to join for it
        (None: the Ray this process already runs, else "auto")
    timeout_s (> 0): seconds one request may take (also bounded by the runtime's `request_deadline`)
    retries (>= 0), backoff_s (>= 0): see Failures
    max_trajectories (>= 1): trajectories the client remembers (the least recently used is forgotten: its next call
        starts a new one)
"""
from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from agents.backends.base import BackendError, BackendTimeout, time_left
from agents.service.protocol import (EMPTY_SHA256, MULTIPLEX_HEADER, CallReply, CallRequest, ErrorReply,
                                     ReplicaStats, ServiceError, sha256)
from agents.workers.base import Worker, WorkerAnswer
from briefing.options import check_int, check_number


class ServiceUnavailable(BackendError):
    """The service did not answer (a dead replica, no proxy, a timeout) after the client's retries."""


class RemoteWorkerError(RuntimeError):
    """A query the service's worker failed ("TypeName: message" of the replica's exception)."""


class _Retry(Exception):
    """A failure worth another attempt with the whole text (the replica died, the proxy did not answer)."""


class ClientStats(BaseModel):
    """What a RemoteBriefedWorker saw. calls: calls made (a batch is one); hits / misses / behind: calls on a
    trajectory the service had seen whose first answer came from a replica holding its cache / holding none (it
    rebuilt it from the whole text) / holding an older copy (it got the rest); new: calls that started a
    trajectory; conflicts: trajectories moved to a new id because a replica held another text under theirs;
    retries: attempts repeated after a failure; failures: calls that ended in an error. replicas: per replica id,
    the largest `replica_bytes` it reported and its budget."""

    calls: int = 0
    new: int = 0
    hits: int = 0
    misses: int = 0
    behind: int = 0
    rebuilt: int = 0
    conflicts: int = 0
    retries: int = 0
    failures: int = 0
    replicas: dict[str, dict[str, int]] = Field(default_factory=dict)

    @property
    def hit_rate(self) -> float | None:
        seen = self.hits + self.misses + self.behind
        return self.hits / seen if seen else None

    @property
    def peak_bytes(self) -> int:
        return max((r["peak_bytes"] for r in self.replicas.values()), default=0)

    @property
    def budget_bytes(self) -> int:
        return max((r["budget_bytes"] for r in self.replicas.values()), default=0)


@dataclass
class _Trajectory:
    """One trajectory the client made: its id, the text the service holds of it as far as the client knows."""

    id: str
    text: str = ""
    digest: Any = field(default_factory=hashlib.sha256)
    busy: bool = False


@dataclass
class RemoteBriefedWorker(Worker):
    url: str | None = None
    app: str | None = None
    address: str | None = None
    timeout_s: float = 300.0
    retries: int = 3
    backoff_s: float = 0.5
    max_trajectories: int = 64
    name: str = "briefed"
    _trajectories: OrderedDict[str, _Trajectory] = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stats: ClientStats = field(default_factory=ClientStats, init=False, repr=False)
    _handle: Any = field(default=None, init=False, repr=False)
    _described: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "RemoteBriefedWorker"
        if (self.url is None) == (self.app is None):
            raise ValueError(f"{owner}: give url= (the service's HTTP address, e.g. http://127.0.0.1:8000/briefed, as "
                             "`rlm serve-worker` prints it) or app= (its Serve application name, from inside the Ray "
                             "cluster), not both and not neither.")
        if self.url is not None:
            from agents.backends.openai_compat import check_url

            self.url = check_url(str(self.url).rstrip("/"), f"{owner}: url")
        elif self.address is not None and not isinstance(self.address, str):
            raise ValueError(f"{owner}: address must be a Ray address ('auto', 'ray://host:10001', ...) or None.")
        check_number(owner, "timeout_s", self.timeout_s, low=0, low_open=True, error=ValueError)
        check_int(owner, "retries", self.retries, low=0, error=ValueError)
        check_number(owner, "backoff_s", self.backoff_s, low=0, error=ValueError)
        check_int(owner, "max_trajectories", self.max_trajectories, low=1, error=ValueError)

    @property
    def where(self) -> str:
        return self.url if self.url is not None else f"Serve application {self.app!r}"

    # -- the Worker protocol ------------------------------------------------------------------------------------

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        (result,) = self._call([query], trajectory, batch=False)
        if isinstance(result, Exception):
            raise result
        return result

    def answer_batch(self, queries: list[str], trajectory: str) -> list[WorkerAnswer | Exception]:
        """One request for the batch; the replica answers it as `BriefedWorker.answer_batch` (answers in query
        order, a failed query's exception in its place). A failure of the whole request stands in every place."""
        if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
            raise TypeError("RemoteBriefedWorker.answer_batch: queries must be a list of strings.")
        if not queries:
            return []
        try:
            return self._call(list(queries), trajectory, batch=True)
        except (ServiceError, BackendError) as e:
            return [e] * len(queries)

    def sync(self, trajectory: str) -> CallReply:
        """Send the trajectory's new text without a query (the replica prefills it); returns the replica's reply."""
        return self._exchange([], trajectory, batch=False)[0]

    def describe(self) -> dict[str, Any]:
        """The service's worker (model, device, dtype, prompt format, selector, ...) and where it is."""
        if self._described is None:
            self._described = self._get("describe")
        remote = {k: v for k, v in self._described.items() if k not in ("name", "replica")}
        return {"name": self.name, "service": self.where, **remote}

    def reset(self) -> int:
        """Forget every trajectory here, and ask the replicas that hold them to drop them (best-effort: a replica
        the request does not reach evicts them in time). Returns how many the service did not confirm."""
        with self._lock:
            ids = list(self._trajectories)
            self._trajectories.clear()
        unconfirmed = 0
        for tid in ids:
            try:
                self._post_drop(tid)
            except (ServiceError, BackendError, _Retry):
                unconfirmed += 1
        return unconfirmed

    def stats(self) -> ClientStats:
        """What this client saw (hit rate, retries, the replicas' peak cache bytes): a copy."""
        with self._lock:
            return self._stats.model_copy(deep=True)

    def service_stats(self) -> ReplicaStats:
        """The counters of one replica (whichever the request reaches)."""
        return ReplicaStats.model_validate(self._get("stats"))

    # -- one call -----------------------------------------------------------------------------------------------

    def _call(self, queries: list[str], trajectory: str, batch: bool) -> list[WorkerAnswer | Exception]:
        if not isinstance(trajectory, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("RemoteBriefedWorker: the query (each query) and the trajectory must be strings.")
        reply, round_trip = self._exchange(queries, trajectory, batch)
        own = sum(a.answer.latency_s for a in reply.answers if a.answer is not None)
        share = max(0.0, round_trip - own) / max(1, len(reply.answers))   # prefill and transport, split evenly
        out: list[WorkerAnswer | Exception] = []
        for item in reply.answers:
            if item.answer is None:
                out.append(RemoteWorkerError(f"the worker on replica {reply.replica} failed: {item.error}"))
            else:
                latency = round_trip if len(reply.answers) == 1 else item.answer.latency_s + share
                out.append(item.answer.model_copy(update={"latency_s": latency}))
        return out

    def _claim(self, trajectory: str) -> tuple[_Trajectory, bool]:
        """The trajectory this text extends (the longest held prefix not in flight), or a new one; marked busy."""
        with self._lock:
            best = max((t for t in self._trajectories.values() if not t.busy and trajectory.startswith(t.text)),
                       key=lambda t: len(t.text), default=None)
            known = best is not None
            if best is None:
                best = _Trajectory(id=uuid.uuid4().hex)
                self._trajectories[best.id] = best
                idle = [tid for tid, t in self._trajectories.items() if not t.busy]
                for tid in idle[: max(0, len(self._trajectories) - self.max_trajectories)]:
                    del self._trajectories[tid]
            self._trajectories.move_to_end(best.id)
            best.busy = True
            return best, known

    def _exchange(self, queries: list[str], trajectory: str, batch: bool) -> tuple[CallReply, float]:
        traj, known = self._claim(trajectory)
        ok = False
        try:
            reply, first, round_trip = self._attempts(traj, queries, trajectory, batch)
            ok = True
        finally:
            with self._lock:
                traj.busy = False
                self._stats.calls += 1
                if not ok:
                    self._stats.failures += 1
                    if not traj.text:             # never held: forget it (a failed first request made nothing)
                        self._trajectories.pop(traj.id, None)
        with self._lock:
            traj.digest.update(trajectory[len(traj.text):].encode("utf-8"))
            traj.text = trajectory
            s = self._stats
            if not known:
                s.new += 1
            elif first == "hit":
                s.hits += 1
            elif first in ("miss", "conflict"):   # the replica reached had no usable cache: rebuilt
                s.misses += 1
            elif first == "behind":
                s.behind += 1
            s.rebuilt += reply.outcome == "rebuilt"
            seen = s.replicas.setdefault(reply.replica, {"peak_bytes": 0, "budget_bytes": reply.budget_bytes})
            seen["peak_bytes"] = max(seen["peak_bytes"], reply.replica_bytes)
        return reply, round_trip

    def _attempts(self, traj: _Trajectory, queries: list[str], trajectory: str,
                  batch: bool) -> tuple[CallReply, str, float]:
        """Requests until one is answered: (the reply, what the first answer was, the last request's round
        trip). first: "hit" | "miss" | "behind" | "new" | "retry"."""
        offset, prefix, rebuild, first = len(traj.text), traj.digest.hexdigest(), False, ""
        if not trajectory.startswith(traj.text):   # claimed by prefix: never; a guard for a misuse of the table
            offset, prefix = 0, EMPTY_SHA256
        failures, turns, rekeyed = 0, 0, False
        while True:
            turns += 1
            req = CallRequest(trajectory_id=traj.id, offset=offset, prefix_sha256=prefix, text=trajectory[offset:],
                              queries=queries, batch=batch, rebuild=rebuild)
            t0 = time.monotonic()
            try:
                reply = self._send(req)
            except _Retry as e:
                failures += 1
                first = first or "retry"
                with self._lock:
                    self._stats.retries += failures <= self.retries
                if failures > self.retries:
                    raise ServiceUnavailable(f"RemoteBriefedWorker: {self.where} did not answer after {failures} "
                                             f"attempts (last: {e}); check that `rlm serve-worker` is running and "
                                             "reachable from here", kind="unreachable", url=self.url) from None
                self._sleep(self.backoff_s * 2 ** (failures - 1))
                offset, prefix, rebuild = 0, EMPTY_SHA256, True    # a live replica rebuilds from the whole text
                continue
            except ServiceError as e:
                if e.code == "unknown_trajectory" and offset > 0 and turns <= self.retries + 3:
                    first = first or "miss"
                    offset, prefix, rebuild = 0, EMPTY_SHA256, True
                    continue
                if e.code == "behind" and e.length is not None and e.length < offset and turns <= self.retries + 3:
                    if e.sha256 == sha256(trajectory[:e.length]):
                        first = first or "behind"
                        offset, prefix = e.length, e.sha256
                        continue
                    e.code = "conflict"           # an older copy of another text: the id holds someone else's
                if e.code == "conflict" and not rekeyed:
                    # the replica holds another text under this id (someone else's request with it): the client's
                    # text is the truth, so the trajectory moves to a new id, rebuilt from the whole text
                    rekeyed, first = True, first or "conflict"
                    self._rekey(traj)
                    offset, prefix, rebuild = 0, EMPTY_SHA256, True
                    continue
                raise ServiceError(e.status, e.code, f"RemoteBriefedWorker: {self.where} answered {e.status} "
                                   f"{e.code}: {e}", length=e.length, sha256=e.sha256, replica=e.replica) from None
            return reply, first or ("hit" if offset else "new"), time.monotonic() - t0

    def _rekey(self, traj: _Trajectory) -> None:
        with self._lock:
            self._trajectories.pop(traj.id, None)
            traj.id = uuid.uuid4().hex
            self._trajectories[traj.id] = traj
            self._stats.conflicts += 1

    def _sleep(self, seconds: float) -> None:
        left = time_left()
        if left is not None and seconds >= left:
            raise BackendTimeout(f"RemoteBriefedWorker: no time left before the caller's deadline to retry "
                                 f"{self.where}", kind="deadline", url=self.url)
        time.sleep(seconds)

    def _timeout(self) -> float:
        left = time_left()
        if left is not None and left <= 0:
            raise BackendTimeout(f"RemoteBriefedWorker: the caller's deadline passed before a request to "
                                 f"{self.where}", kind="deadline", url=self.url)
        return self.timeout_s if left is None else min(self.timeout_s, left)

    # -- transports ---------------------------------------------------------------------------------------------

    def _send(self, req: CallRequest) -> CallReply:
        """One request: the reply, a ServiceError (the service's refusal) or _Retry (no answer)."""
        if self.url is not None:
            status, body = self._http("POST", "call", req.model_dump_json().encode("utf-8"),
                                      {MULTIPLEX_HEADER: req.trajectory_id})
        else:
            status, body = self._via_handle("call", req.model_dump(mode="json"), req.trajectory_id)
        if status != 200:
            raise ServiceError.from_reply(ErrorReply.model_validate(body))
        return CallReply.model_validate(body)

    def _get(self, op: str) -> dict[str, Any]:
        try:
            if self.url is not None:
                status, body = self._http("GET", op, None, {})
            else:
                status, body = 200, self._via_handle(op, None, None)
        except _Retry as e:
            raise ServiceUnavailable(f"RemoteBriefedWorker: {self.where} did not answer ({e}); check that "
                                     "`rlm serve-worker` is running and reachable from here", kind="unreachable",
                                     url=self.url) from None
        if status != 200:
            raise ServiceError.from_reply(ErrorReply.model_validate(body))
        return body

    def _post_drop(self, tid: str) -> None:
        if self.url is not None:
            self._http("POST", "drop", json.dumps({"trajectory_id": tid}).encode(), {MULTIPLEX_HEADER: tid})
        else:
            self._via_handle("drop", tid, tid)

    def _http(self, method: str, op: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        url = f"{self.url}/{op}"
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              **headers})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout()) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = _read(e)
            try:
                body = json.loads(raw)
                ErrorReply.model_validate(body)
            except ValueError:   # not the service's own error (JSON parse or validation): the proxy's
                if e.code >= 500 or e.code == 429:
                    raise _Retry(f"HTTP {e.code} from {url}: {' '.join(raw[:200].split()) or e.reason}") from None
                body = ErrorReply(status=e.code, code="http", message=f"{url} answered HTTP {e.code} "
                                  f"({' '.join(raw[:200].split()) or e.reason}): is it the address `rlm serve-worker` "
                                  "printed?").model_dump()
            return e.code, body
        except (TimeoutError, socket.timeout) as e:
            raise _Retry(f"no answer within the timeout from {url}") from e
        except urllib.error.URLError as e:
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            raise _Retry(f"cannot reach {url}: {reason}") from e
        except (ConnectionError, http.client.HTTPException, OSError, ValueError) as e:
            raise _Retry(f"{url}: {type(e).__name__}: {e}") from e

    def _via_handle(self, op: str, payload: Any, tid: str | None) -> Any:
        handle = self._app_handle()
        if tid is not None:
            handle = handle.options(multiplexed_model_id=tid)
        method = getattr(handle, op)
        try:
            out = (method.remote(payload) if payload is not None else method.remote()).result(
                timeout_s=self._timeout())
        except TimeoutError as e:
            raise _Retry(f"no answer within the timeout from {self.where}") from e
        except Exception as e:   # a dead or unavailable replica (ray.exceptions.RayActorError and kin): retried
            import ray.exceptions

            if isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                              ray.exceptions.RaySystemError)) or type(e).__name__ in ("BackPressureError",):
                raise _Retry(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
            raise
        if op == "call":
            return out["status"], out["body"]
        return out

    def _app_handle(self) -> Any:
        if self._handle is None:
            try:
                import ray
                from ray import serve
            except ImportError:
                raise ImportError("RemoteBriefedWorker(app=...) needs Ray Serve here: pip install "
                                  "'latent-briefing[serve]', or connect with url= (no Ray needed)") from None
            if not ray.is_initialized():
                ray.init(address=self.address or "auto", log_to_driver=False)
            self._handle = serve.get_app_handle(self.app)
        return self._handle


def _read(e: urllib.error.HTTPError) -> str:
    try:
        return e.read().decode("utf-8", "replace")
    except Exception:
        return ""
