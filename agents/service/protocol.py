"""The wire protocol of the briefed-worker service (`rlm serve-worker`): what a client sends, what a replica answers.

One request, `CallRequest`, both appends and asks: the client says how much of the trajectory it believes the
replica holds (`offset` characters, with the SHA-256 of those characters) and sends the rest (`text`), with the
queries to answer on the whole (none: an append only). The trajectory id keys the replica's cache and is also the
Ray Serve multiplexed model id, so that requests for one trajectory go to the replica that holds it.

What a replica answers (HTTP status, `ErrorReply.code`):
    200  a `CallReply`: outcome "new" (a trajectory it did not hold, offset 0), "hit" (it held it), "rebuilt" (it did
         not hold it and the client sent the whole text again), and the answers in query order, each an answer or
         the error of that query (the others stand)
    404  unknown_trajectory: the replica holds no cache of this id and the request starts past 0; the client
         resends the whole text (offset 0, `rebuild=True`): affinity is best-effort, so this is a miss, not a fault
    409  conflict: the text does not extend what the replica holds (another prefix hash, or it rewrites held text);
         nothing is changed. behind: the replica holds an older copy (`length` and `sha256` say which); the client
         sends the text from there
    413  too_large: the request body (or its text) is over the replica's limit. cache_too_large: this trajectory's
         cache alone is over the replica's byte budget (the cache is dropped)
    422  invalid: the request is not a CallRequest (a field is missing, malformed or out of range), or its
         multiplexed id is not its trajectory id. worker_error: the worker could not hold the text (its message
         says why; the trajectory is dropped from the replica)
    400  bad_json: the body is not JSON
    500  internal: the replica failed on this request (its caches of other trajectories stand)
Offsets count characters (Python `str` length); hashes are of the UTF-8 bytes.
"""
from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.workers.base import WorkerAnswer

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
SHA_PATTERN = r"^[0-9a-f]{64}$"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# the multiplexed model id travels in this header through Serve's HTTP proxy (hyphens are accepted too)
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
DEFAULT_ROUTE = "/briefed"
DEFAULT_APP = "briefed-worker"
DEFAULT_PORT = 8000


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallRequest(BaseModel):
    """Append `text` at `offset` of trajectory `trajectory_id`, then answer `queries` on the whole.

    prefix_sha256: SHA-256 of the trajectory's first `offset` characters (what the client believes the replica
    holds). batch: answer the queries as one batch (`Worker.answer_batch`) rather than one `answer` each.
    rebuild: the client resends the whole text after a miss or a failed replica (counted as a rebuild)."""

    model_config = ConfigDict(extra="forbid")

    trajectory_id: str = Field(pattern=ID_PATTERN)
    offset: int = Field(ge=0)
    prefix_sha256: str = Field(pattern=SHA_PATTERN)
    text: str = ""
    queries: list[str] = Field(default_factory=list, max_length=1024)
    batch: bool = False
    rebuild: bool = False


class AnswerItem(BaseModel):
    """One query's outcome: its answer, or the error it raised ("TypeName: message")."""

    answer: WorkerAnswer | None = None
    error: str | None = None


class CallReply(BaseModel):
    """A replica's answer to a `CallRequest`.

    length / sha256: the trajectory the replica now holds. outcome: see the module doc. handled_s: seconds on the
    replica (waiting for its model included). cache_bytes: KV bytes of this trajectory's cache; replica_bytes: of
    every cache the replica holds after the request, never over budget_bytes; evicted: caches this request evicted
    (least recently used first); trajectories: caches the replica holds."""

    trajectory_id: str
    length: int
    sha256: str
    replica: str
    outcome: Literal["new", "hit", "rebuilt"]
    answers: list[AnswerItem] = Field(default_factory=list)
    handled_s: float = 0.0
    cache_bytes: int = 0
    replica_bytes: int = 0
    budget_bytes: int = 0
    evicted: int = 0
    trajectories: int = 0


class ErrorReply(BaseModel):
    """A request the replica refused or failed (status, code and message as in the module doc); `length` and
    `sha256` say what it holds when the code is "behind"."""

    status: int
    code: str
    message: str
    replica: str = ""
    length: int | None = None
    sha256: str | None = None


class ReplicaStats(BaseModel):
    """One replica's counters since it started (`GET {url}/stats` answers from whichever replica it reaches; with
    the multiplexed-id header, most likely from the one holding that trajectory). pid: the replica's process."""

    replica: str
    pid: int = 0
    trajectories: int = 0
    cache_bytes: int = 0
    peak_bytes: int = 0
    budget_bytes: int = 0
    requests: int = 0
    new: int = 0
    hits: int = 0
    rebuilt: int = 0
    misses: int = 0
    behind: int = 0
    conflicts: int = 0
    rejected: int = 0
    evictions: int = 0
    failures: int = 0


class ServiceError(Exception):
    """A request the service refused or failed: `status` (the HTTP status, or the same code over a deployment
    handle), `code` (ErrorReply.code) and a one-line message that says what to do."""

    def __init__(self, status: int, code: str, message: str, *, length: int | None = None,
                 sha256: str | None = None, replica: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.length, self.sha256, self.replica = status, code, length, sha256, replica

    def reply(self) -> ErrorReply:
        return ErrorReply(status=self.status, code=self.code, message=str(self), replica=self.replica,
                          length=self.length, sha256=self.sha256)

    @classmethod
    def from_reply(cls, e: ErrorReply) -> ServiceError:
        return cls(e.status, e.code, e.message, length=e.length, sha256=e.sha256, replica=e.replica)
