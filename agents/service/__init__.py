"""The briefed-worker service: trajectory caches held by Ray Serve replicas, reached by `RemoteBriefedWorker`.

- `protocol`: the requests and replies (pydantic), the statuses, `ServiceError`; no Ray, no torch.
- `store`: one replica's state, `TrajectoryStore` (an LRU of trajectory caches under a byte budget), and
  `ServiceConfig`; no Ray.
- `app`: the Ray Serve deployment and `start` / `stop` (imports Ray Serve: the `[serve]` extra).
The client is `agents.workers.RemoteBriefedWorker`; the command is `rlm serve-worker`. See docs/service.md.
"""
from agents.service.protocol import (AnswerItem, CallReply, CallRequest, ErrorReply, ReplicaStats, ServiceError,
                                     sha256)
from agents.service.store import ServiceConfig, TrajectoryStore

__all__ = ["AnswerItem", "CallReply", "CallRequest", "ErrorReply", "ReplicaStats", "ServiceError", "ServiceConfig",
           "TrajectoryStore", "sha256"]
