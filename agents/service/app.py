"""The briefed-worker service on Ray Serve: the deployment and how to start it (`rlm serve-worker` calls `start`).

Each replica loads the worker model once and holds a `TrajectoryStore` (the trajectory caches, least recently used
first, under a byte budget). The trajectory id is the Ray Serve multiplexed model id: every request registers it
with `@serve.multiplexed`, so Serve routes the next request of that trajectory to a replica that holds it. That
affinity is best-effort (concurrent first requests of one id were seen to land on both replicas, and a replica
that restarted holds nothing): a replica that lacks the cache answers 404 and the client sends the whole text, from
which the replica rebuilds it (agents.service.protocol).

Two ways in, one request handler:
- HTTP through Serve's proxy: POST {url}/call with the header `serve_multiplexed_model_id: <trajectory id>`,
  GET {url}/stats, GET {url}/describe, POST {url}/drop (an orchestrator on another machine: no Ray there);
- deployment handles (`serve.get_app_handle(app).options(multiplexed_model_id=tid).call.remote(payload)`), for
  a driver inside the Ray cluster; they answer {"status": ..., "body": ...} with the same statuses as HTTP.
A replica runs the model in one thread, one request at a time (its event loop keeps answering health checks).
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agents.service.protocol import (DEFAULT_APP, DEFAULT_PORT, DEFAULT_ROUTE, MULTIPLEX_HEADER, CallRequest,
                                     ErrorReply, ServiceError)
from agents.service.store import ServiceConfig, TrajectoryStore

SERVE_MISSING = ("the briefed-worker service needs Ray Serve: pip install 'latent-briefing[serve]' "
                 "(`make setup` installs it)")
try:
    import ray
    from ray import serve
except ImportError as _e:   # the optional extra is not installed: one line that says what to install
    raise ImportError(SERVE_MISSING) from _e

# trajectory ids Serve's router remembers per replica (its own LRU, by count); the store's budget decides what is
# actually held: an id routed to a replica that evicted it is a miss there, and the replica rebuilds it
ROUTED_IDS = 1024


def _error(status: int, code: str, message: str, replica: str = "") -> tuple[int, dict[str, Any]]:
    return status, ErrorReply(status=status, code=code, message=message, replica=replica).model_dump()


def _invalid(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"not a CallRequest: {where}: {first.get('msg', 'invalid')}{more}; see agents.service.protocol"


@serve.deployment(name="BriefedWorkerService", max_ongoing_requests=256, graceful_shutdown_timeout_s=5)
class BriefedWorkerService:
    """One replica: the model, its trajectory caches, and the request handler for handles and HTTP."""

    def __init__(self, config: ServiceConfig) -> None:
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id if context is not None else "local"
        self.store = TrajectoryStore(config, replica=self.replica)
        self.store.load()                                     # ready only once the model is loaded
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="briefed-worker")
        self.max_bytes = config.max_request_bytes

    @serve.multiplexed(max_num_models_per_replica=ROUTED_IDS)
    async def route(self, trajectory_id: str) -> str:
        """Registers the id with Serve's router: the next request of this trajectory comes here."""
        return trajectory_id

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def handle(self, payload: Any, size: int | None = None) -> tuple[int, dict[str, Any]]:
        """One CallRequest (a dict): (status, CallReply or ErrorReply as a dict)."""
        if size is None:
            size = len(json.dumps(payload, ensure_ascii=False).encode()) if isinstance(payload, dict) else 0
        if size > self.max_bytes:
            self.store.stats.rejected += 1
            return _error(413, "too_large", f"the request is {size:,} bytes, over this service's limit of "
                          f"{self.max_bytes:,} (rlm serve-worker --max-request-bytes)", self.replica)
        try:
            req = CallRequest.model_validate(payload)
        except ValidationError as e:
            self.store.stats.rejected += 1
            return _error(422, "invalid", _invalid(e), self.replica)
        routed = serve.get_multiplexed_model_id()
        if routed != req.trajectory_id:
            self.store.stats.rejected += 1
            return _error(422, "invalid", f"the multiplexed model id ({MULTIPLEX_HEADER} header, or the handle's "
                          f"multiplexed_model_id) is {routed!r}, not the trajectory_id {req.trajectory_id!r}: send "
                          "the trajectory id as both", self.replica)
        await self.route(req.trajectory_id)
        try:
            reply = await self._run(self.store.call, req)
        except ServiceError as e:
            return e.status, e.reply().model_dump()
        except Exception as e:   # a failure of this request: the caches of the other trajectories stand
            self.store.stats.failures += 1
            return _error(500, "internal", f"{type(e).__name__}: {e}", self.replica)
        return 200, reply.model_dump(mode="json")

    # -- deployment handles -------------------------------------------------------------------------------------

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.handle(payload)
        return {"status": status, "body": body}

    async def stats(self) -> dict[str, Any]:
        return self.store.stats.model_dump()

    async def describe(self) -> dict[str, Any]:
        return await self._run(self.store.describe)

    async def drop(self, trajectory_id: str) -> dict[str, Any]:
        return {"dropped": await self._run(self.store.drop, str(trajectory_id)), "replica": self.replica}

    # -- HTTP (Serve's proxy) -----------------------------------------------------------------------------------

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        op = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and op == "stats":
            return JSONResponse(await self.stats())
        if request.method == "GET" and op == "describe":
            return JSONResponse(await self.describe())
        if request.method != "POST" or op not in ("call", "drop"):
            status, body = _error(404, "no_such_endpoint", f"{request.method} {request.url.path}: the endpoints are "
                                  "POST .../call, POST .../drop, GET .../stats and GET .../describe", self.replica)
            return JSONResponse(body, status_code=status)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            self.store.stats.rejected += 1
            status, body = _error(413, "too_large", f"the request is {int(declared):,} bytes, over this service's "
                                  f"limit of {self.max_bytes:,} (rlm serve-worker --max-request-bytes)", self.replica)
            return JSONResponse(body, status_code=status)
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except ValueError as e:
            status, body = _error(400, "bad_json", f"the body is not JSON ({e})", self.replica)
            return JSONResponse(body, status_code=status)
        if op == "drop":
            tid = payload.get("trajectory_id") if isinstance(payload, dict) else None
            if not isinstance(tid, str):
                status, body = _error(422, "invalid", "drop takes {\"trajectory_id\": \"...\"}", self.replica)
                return JSONResponse(body, status_code=status)
            return JSONResponse(await self.drop(tid))
        status, body = await self.handle(payload, size=len(raw))
        return JSONResponse(body, status_code=status)


# -- starting and stopping ----------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class Started:
    """A running service. app: its Serve application; url: its HTTP address (None without the proxy).
    ray_address: the Ray cluster's GCS address (for `ray.init(address=...)` from a driver on the cluster).
    Start-up seconds: ray_s (ray.init), serve_s (Serve's controller and proxy), ready_s (the replicas, their model
    loaded), http_s (until the proxy answered; None without it); total_s. owns_ray: this process started Ray."""

    app: str
    url: str | None
    replicas: int
    address: str
    ray_address: str
    ray_s: float
    serve_s: float
    ready_s: float
    http_s: float | None
    total_s: float
    owns_ray: bool

    def handle(self) -> Any:
        return serve.get_app_handle(self.app)

    def figures(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("replicas", "ray_s", "serve_s", "ready_s", "http_s", "total_s")}


def start(config: ServiceConfig, *, replicas: int = 1, address: str | None = None, app: str = DEFAULT_APP,
          http: bool = True, host: str = "127.0.0.1", port: int = DEFAULT_PORT, route: str = DEFAULT_ROUTE,
          cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, proxy_timeout_s: float = 120.0,
          log: Any = None) -> Started:
    """Start the service: Ray in this process (address None) or joined (`address`: "auto" or a cluster's address),
    Serve with its HTTP proxy on host:port (http) or without one (deployment handles only), and `replicas`
    replicas of the deployment. Returns when the replicas are ready and, with http, the proxy answers."""
    say = log or (lambda text: None)
    t0 = time.monotonic()
    owns = not ray.is_initialized()
    if owns:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(replicas * cpus_per_replica))
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    t1 = time.monotonic()
    say(f"ray: {'joined ' + address if address else 'started in this process'} ({t1 - t0:.1f}s)")
    if http:
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    else:
        serve.start(proxy_location="Disabled")
    t2 = time.monotonic()
    say(f"serve: controller{' and HTTP proxy' if http else ''} started ({t2 - t1:.1f}s)")
    options: dict[str, Any] = {"num_cpus": cpus_per_replica}
    if gpus_per_replica:
        options["num_gpus"] = gpus_per_replica
    deployment = BriefedWorkerService.options(num_replicas=replicas, ray_actor_options=options)
    serve.run(deployment.bind(config), name=app, route_prefix=route if http else None)
    t3 = time.monotonic()
    say(f"replicas: {replicas} ready, model loaded ({t3 - t2:.1f}s)")
    url, http_s = None, None
    if http:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown}:{port}{route}"
        _wait_for_proxy(url, proxy_timeout_s)
        http_s = time.monotonic() - t3
        say(f"http: {url} answers ({http_s:.1f}s)")
    return Started(app=app, url=url, replicas=replicas, address=address or "local",
                   ray_address=ray.get_runtime_context().gcs_address, ray_s=t1 - t0, serve_s=t2 - t1,
                   ready_s=t3 - t2, http_s=http_s, total_s=time.monotonic() - t0, owns_ray=owns)


def _wait_for_proxy(url: str, timeout_s: float) -> None:
    """Until GET {url}/describe answers 200; else a one-line error after timeout_s."""
    end = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{url}/describe", timeout=max(1.0, min(10.0, end - time.monotonic()))) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
    raise TimeoutError(f"Serve's HTTP proxy did not answer at {url} within {timeout_s:g}s (last: {last}); it was seen "
                       "not to start in time on busy machines: raise --proxy-timeout, or serve without it (--no-http) "
                       "and connect with deployment handles from inside the Ray cluster")


def stop(started: Started) -> None:
    """Delete the application; shut Serve and Ray down when this process started Ray."""
    try:
        serve.delete(started.app)
    finally:
        if started.owns_ray:
            serve.shutdown()
            ray.shutdown()


def replica_actors(app: str = DEFAULT_APP) -> list[str]:
    """The Ray actor names of the application's replicas (namespace "serve"): for fault drills (`ray.kill`)."""
    from ray.util import list_named_actors

    prefix = f"SERVE_REPLICA::{app}#"
    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == "serve" and a["name"].startswith(prefix))
