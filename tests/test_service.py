"""The briefed-worker service (`rlm serve-worker`, `agents.service`, `agents.RemoteBriefedWorker`).

Two tiers in one module:
- without Ray: one replica's protocol (`TrajectoryStore`: new, hit, miss, behind, conflict, the byte budget) and the
  client's answers to each (misses rebuilt, older copies caught up, dead replicas retried), the CLI's checks;
- with Ray Serve: ONE service started the way a user starts it (`rlm serve-worker` in a subprocess, two replicas of a
  tiny random model, HTTP on loopback), shared by the tests below it: answers and token accounting equal to an
  in-process BriefedWorker (and the same worker-call events in a run), routing and its hit rate, a forced miss
  rebuilt, bad requests (4xx, nothing else touched), the byte budget, a killed replica, the handle path, Ctrl-C.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents import BriefedWorker, RemoteBriefedWorker, ScriptedPolicy, WorkerAnswer
from agents.service import CallRequest, ServiceConfig, ServiceError, TrajectoryStore, sha256
from agents.service.protocol import EMPTY_SHA256, MULTIPLEX_HEADER
from agents.workers.remote import RemoteWorkerError, ServiceUnavailable, _Retry

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(max_new_tokens=6, reserve=128, cache_budget=600)   # the worker options of every service here
BUDGET = 928 * 1024   # bytes per replica: about three trajectories of this module (keys, values and the archive, its
# token states included since round 12: 12-17% more per trajectory than the 800 KiB this was sized for before)


def trajectory(secret: str, calls: int = 0) -> str:
    """A run's trajectory text holding its own secret, grown by `calls` worker calls (append-only)."""
    text = (f"Query: what is the code?\nContext: a str of 400 characters.\n\n[output]\nThe archive note says the "
            f"code is {secret}. The gulls were loud over the harbour wall that day.\n\n")
    for i in range(calls):
        text += f"[worker call {i + 1}]\nQuery: part {i}?\nAnswer: nothing in part {i}.\n\n"
    return text


def comparable(a: WorkerAnswer, rebuilt: bool = False) -> dict:
    """An answer without its timings (latency, compaction and fold times): what must match in-process exactly. A
    rebuilt cache prefilled the whole text at once (its `prefilled_tokens` say so), which gives the same tokens and
    the same cache up to float rounding: `rebuilt` leaves that count out and rounds the fit's errors."""
    d = a.model_dump(exclude={"latency_s"})
    if d["briefing"] and rebuilt:
        d["briefing"].pop("prefilled_tokens")
    if d["briefing"]:
        d["briefing"] = {k: v for k, v in d["briefing"].items() if not k.endswith("_s")}   # recall_s, ...
        d["briefing"]["compaction"] = {k: float(f"{v:.4g}") if rebuilt and isinstance(v, float) else v
                                       for k, v in d["briefing"]["compaction"].items() if not k.startswith("time_")}
        d["briefing"]["folds"] = [{k: v for k, v in f.items() if not k.endswith("_s")} for f in d["briefing"]["folds"]]
    return d


@pytest.fixture(scope="module")
def tiny_lm(tok):
    from tests.tiny import tiny_model

    return tiny_model("llama-gqa", tok, max_positions=1024)


# -- one replica's protocol, without Ray -----------------------------------------------------------------------

def request(tid: str, held: str, full: str, queries=(), **kw) -> CallRequest:
    return CallRequest(trajectory_id=tid, offset=len(held), prefix_sha256=sha256(held), text=full[len(held):],
                       queries=list(queries), **kw)


def test_a_replica_extends_answers_and_refuses_what_does_not_extend(tiny_lm):
    store = TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS, cache_bytes=BUDGET))
    local = BriefedWorker(lm=tiny_lm, **OPTIONS)
    t1, t2 = trajectory("KESTREL-41"), trajectory("KESTREL-41", 2)
    first = store.call(request("run-a", "", t1, ["What is the code?"]))
    assert first.outcome == "new" and first.length == len(t1) and first.sha256 == sha256(t1)
    assert comparable(first.answers[0].answer) == comparable(local.answer("What is the code?", t1))
    batch = store.call(request("run-a", t1, t2, ["Which part?", "What is the code?"], batch=True))
    assert batch.outcome == "hit" and [comparable(a.answer) for a in batch.answers] == \
        [comparable(a) for a in local.answer_batch(["Which part?", "What is the code?"], t2)]
    assert batch.answers[0].answer.briefing.prefilled_tokens < first.answers[0].answer.briefing.prefilled_tokens
    # a resend of text the replica holds is idempotent; an append-only request answers nothing
    assert store.call(request("run-a", "", t2)).outcome == "hit" and store.call(request("run-a", t2, t2)).answers == []
    cases = [
        (request("nobody", "x" * 10, "x" * 12), 404, "unknown_trajectory", "holds no trajectory 'nobody'"),
        (CallRequest(trajectory_id="run-a", offset=len(t2), prefix_sha256=sha256("another text"), text="more"),
         409, "conflict", "does not extend"),
        (request("run-a", "", "A different text altogether"), 409, "conflict", "append-only"),
        (request("run-a", t2 + "seen elsewhere", t2 + "seen elsewhere and more"), 409, "behind", f"holds {len(t2)}"),
        (CallRequest(trajectory_id="fresh", offset=0, prefix_sha256=sha256("x"), text="y"), 409, "conflict", "empty"),
    ]
    for req, status, code, words in cases:
        with pytest.raises(ServiceError, match=words) as e:
            store.call(req)
        assert (e.value.status, e.value.code) == (status, code)
    assert e.value.reply().code == "conflict" and store.held["run-a"].text == t2    # refusals change nothing
    s = store.stats
    assert (s.new, s.hits, s.misses, s.conflicts, s.behind) == (1, 3, 1, 3, 1) and s.requests == 9


def test_a_replica_keeps_its_caches_within_the_byte_budget(tiny_lm):
    store = TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS, cache_bytes=BUDGET))
    texts = {f"run-{i}": trajectory(f"SECRET-{i}", calls=i % 3) for i in range(6)}
    for tid, text in texts.items():
        reply = store.call(request(tid, "", text))
        assert reply.replica_bytes == store.bytes() <= BUDGET and reply.cache_bytes > 0
        # the default recall (RoutedRecall) keeps an archive: the budget counts it with the keys and values
        cache = store.held[tid].worker._caches[-1]
        assert cache.archive is not None and reply.cache_bytes == cache.held_bytes() > cache.kv_bytes()
    assert store.stats.evictions >= 3 and list(store.held) == list(texts)[-len(store.held):]   # LRU order
    assert store.stats.peak_bytes <= BUDGET
    # an evicted trajectory is a miss (404), and rebuilt from the whole text
    with pytest.raises(ServiceError, match="holds no trajectory") as e:
        store.call(request("run-0", texts["run-0"], texts["run-0"] + "more"))
    assert e.value.status == 404
    assert store.call(request("run-0", "", texts["run-0"] + "more", rebuild=True)).outcome == "rebuilt"
    # one cache over the budget alone: a 413 naming the budget, and the cache is not kept
    tight = TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS, cache_bytes=20_000))
    with pytest.raises(ServiceError, match="budget of 20,000 bytes") as e:
        tight.call(request("big", "", trajectory("SECRET")))
    assert (e.value.status, e.value.code) == (413, "cache_too_large") and not tight.held


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(cache_bytes=0), "cache_bytes must be an integer >= 1"),
    (dict(worker={"lm": None}), "cannot set: lm"),
    (dict(worker={"max_new_tokens": 0}), "max_new_tokens must be an integer >= 1"),
    (dict(max_request_bytes=10), "max_request_bytes must be an integer >= 1024"),
])
def test_service_config_refuses_bad_values_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServiceConfig(**kwargs)


def loopback(stores: list[TrajectoryStore], route, fail=lambda req: False, **kw) -> RemoteBriefedWorker:
    """A client whose requests go straight to `stores[route(request)]` (no Ray, no HTTP); `fail(request)`: the
    replica dies on that request."""
    client = RemoteBriefedWorker(url="http://loopback.invalid/briefed", backoff_s=0, **kw)

    def send(req: CallRequest):
        if fail(req):
            raise _Retry("the replica died")
        return stores[route(req)].call(req)

    client._send = send
    return client


def test_the_client_rebuilds_on_a_miss_catches_up_an_older_copy_and_retries_a_dead_replica(tiny_lm):
    stores = [TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS), replica=f"r{i}") for i in range(2)]
    local = BriefedWorker(lm=tiny_lm, **OPTIONS)
    hops = iter([0, 0, 1, 1, 0, 0, 1])        # the replica each request reaches: affinity is best-effort
    client = loopback(stores, lambda req: next(hops))
    q = "What is the code?"
    texts = [trajectory("HERON-7", calls=n) for n in range(4)]
    for n, text in enumerate(texts):
        assert comparable(client.answer(q, text), n >= 2) == comparable(local.answer(q, text), n >= 2), n
    s = client.stats()
    # r0 new; r0 hit; r1 miss -> rebuilt (2 requests); r0 behind -> caught up (2 requests)
    assert (s.calls, s.new, s.hits, s.misses, s.behind, s.rebuilt) == (4, 1, 1, 1, 1, 1) and s.hit_rate == 1 / 3
    assert stores[0].stats.behind == 1 and stores[1].stats.rebuilt == 1
    assert set(s.replicas) == {"r0", "r1"} and s.peak_bytes > 0
    # a replica that dies on a request: retried with the whole text, answered the same
    dead = {"n": 2}

    def dies(req):
        dead["n"] -= 1
        return dead["n"] >= 0

    flaky = loopback(stores, lambda req: 0, fail=dies, retries=3)
    assert comparable(flaky.answer(q, texts[1]), True) == comparable(local.answer(q, texts[1]), True)
    assert flaky.stats().retries == 2
    gone = loopback(stores, lambda req: 0, fail=lambda req: True, retries=2)
    with pytest.raises(ServiceUnavailable, match="did not answer after 3 attempts .*rlm serve-worker"):
        gone.answer(q, texts[0])
    assert gone.answer_batch([q, q], texts[0])[1].__class__ is ServiceUnavailable
    assert not gone._trajectories                # a trajectory never held is forgotten


def test_a_replica_holding_another_text_under_the_id_moves_the_trajectory_to_a_new_id(tiny_lm):
    """A request of someone else's made a replica hold a shorter, other text under a run's id: the replica answers
    409 behind with a hash that is not the run's prefix, and the client moves the run to a new id, rebuilt."""
    stores = [TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS), replica=f"r{i}") for i in range(2)]
    local = BriefedWorker(lm=tiny_lm, **OPTIONS)
    hops = iter([0, 1, 1, 1])
    client = loopback(stores, lambda req: next(hops))
    q = "What is the code?"
    client.answer(q, trajectory("EIDER-4"))
    (tid,) = client._trajectories
    stores[1].call(CallRequest(trajectory_id=tid, offset=0, prefix_sha256=EMPTY_SHA256, text="Rewritten"))
    grown = trajectory("EIDER-4", calls=1)
    assert comparable(client.answer(q, grown), True) == comparable(local.answer(q, grown), True)
    s = client.stats()
    assert (s.conflicts, s.failures, s.rebuilt) == (1, 0, 1) and tid not in client._trajectories
    assert stores[1].held[tid].text == "Rewritten"     # the other text stands: nothing of it was touched


def test_the_client_keeps_concurrent_runs_on_their_own_trajectories(tiny_lm):
    store = TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS))
    lock = threading.Lock()

    def serial(req):
        with lock:
            return store.call(req)

    client = RemoteBriefedWorker(url="http://loopback.invalid/briefed")
    client._send = serial
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for n in range(3):
                client.answer("What is the code?", trajectory(f"RUN-{i}", calls=n))
        except BaseException as e:   # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(store.held) == 4 and client.stats().hits == 8
    assert sorted(h.text for h in store.held.values()) == sorted(trajectory(f"RUN-{i}", 2) for i in range(4))


def test_a_query_the_worker_fails_is_an_error_in_its_place(tiny_lm):
    store = TrajectoryStore(ServiceConfig(lm=tiny_lm, worker=OPTIONS))
    client = loopback([store], lambda req: 0)
    long_query = "Why? " * 200                 # over the reserve: the worker refuses this query only
    out = client.answer_batch(["What is the code?", long_query], trajectory("PETREL-1"))
    assert isinstance(out[0], WorkerAnswer) and isinstance(out[1], RemoteWorkerError)
    assert "reserve" in str(out[1])
    with pytest.raises(RemoteWorkerError, match="failed: BriefingError"):
        client.answer(long_query, trajectory("PETREL-1"))


def test_remote_worker_refuses_bad_settings_in_one_line():
    with pytest.raises(ValueError, match="give url= .* or app="):
        RemoteBriefedWorker()
    with pytest.raises(ValueError, match="not an http:// or https:// URL"):
        RemoteBriefedWorker(url="localhost:8000")
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        RemoteBriefedWorker(url="http://127.0.0.1:8000/briefed", retries=-1)


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--context", "README.md", "--query", "q", "--worker-backend", "service"], "needs --worker-base-url"),
    (["run", "--context", "README.md", "--query", "q", "--worker-backend", "service", "--worker", "text",
      "--worker-base-url", "http://127.0.0.1:1/briefed"], "serves the briefed worker"),
    (["run", "--context", "README.md", "--query", "q", "--worker-backend", "service", "--tau", "2",
      "--worker-base-url", "http://127.0.0.1:1/briefed"], "give them to `rlm serve-worker`"),
    (["serve-worker", "--cache-bytes", "lots"], "expected a size in bytes such as 512M"),
    (["serve-worker", "--replicas", "0"], "must be an integer >= 1"),
])
def test_service_options_end_with_one_line(argv, message, capsys, monkeypatch):
    from rlm.cli import main

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_serve_worker_says_what_is_missing_in_one_line(capsys, monkeypatch):
    from rlm.cli import main

    assert main(["serve-worker", "--model", "no-such-model"]) == 2
    assert "argument --model: 'no-such-model' is not a known model" in capsys.readouterr().err
    import agents.service

    monkeypatch.delitem(sys.modules, "agents.service.app", raising=False)
    monkeypatch.delattr(agents.service, "app", raising=False)   # else `from agents.service import app` finds it
    monkeypatch.setitem(sys.modules, "ray", None)          # Ray Serve not installed
    assert main(["serve-worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rlm serve-worker: the briefed-worker service needs Ray Serve: pip install " \
                  "'latent-briefing[serve]' (`make setup` installs it)"


def test_sizes_take_binary_units():
    from rlm.cli import _size

    assert (_size("2G"), _size("512MiB"), _size("1.5k"), _size("4096")) == (2 ** 31, 2 ** 29, 1536, 4096)


def test_a_dead_service_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RemoteBriefedWorker(url=f"http://127.0.0.1:{port}/briefed", retries=1, backoff_s=0)
    with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}/briefed did not answer after 2 attempts"):
        client.answer("q", "some trajectory")


# -- the service on Ray Serve: one `rlm serve-worker`, two replicas --------------------------------------------

def _serve_missing() -> str | None:
    """Why the service tests cannot run here (None: they can); looked up without importing Ray."""
    from importlib.util import find_spec

    if all(find_spec(name) for name in ("ray", "starlette", "uvicorn", "fastapi")):
        return None
    return "ray[serve] is not installed: pip install 'latent-briefing[serve]' (make setup installs it)"


serve_missing = _serve_missing()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_lm):
    """`rlm serve-worker` on a tiny model saved to a folder: two replicas, HTTP on a free loopback port."""
    if serve_missing:
        pytest.skip(serve_missing)
    folder = tmp_path_factory.mktemp("tiny-worker")
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    err = open(folder / "stderr.txt", "w")
    argv = [sys.executable, "-m", "rlm.cli", "serve-worker", "--model", str(folder), "--device", "cpu",
            "--replicas", "2", "--port", str(free_port()), "--cache-bytes", str(BUDGET),
            "--max-request-bytes", "64K", "--max-new-tokens", str(OPTIONS["max_new_tokens"]),
            "--reserve", str(OPTIONS["reserve"]), "--cache-budget", str(OPTIONS["cache_budget"]), "--threads", "1",
            "--cpus-per-replica", "0.5"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(600)
    out = "".join(lines)
    if proc.poll() is not None or "Ctrl-C stops it" not in out:
        proc.kill()
        pytest.fail(f"rlm serve-worker did not start: {out[-2000:]} {(folder / 'stderr.txt').read_text()[-2000:]}")
    url = re.search(r"HTTP: (\S+)", out).group(1)
    info = dict(url=url, proc=proc, out=lines, started_s=time.monotonic() - t0, folder=folder,
                ray_address=re.search(r"on the Ray cluster at (\S+)", out).group(1),
                startup=re.search(r"started in ([\d.]+)s", out).group(1))
    print(f"\nrlm serve-worker started in {info['startup']}s ({info['started_s']:.1f}s with the subprocess)")
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    err.close()


@pytest.fixture(scope="module")
def local(service):
    """An in-process BriefedWorker on the same weights, one thread as each replica."""
    import briefing
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield BriefedWorker(lm=briefing.load_model(str(service["folder"]), device="cpu"), **OPTIONS)
    torch.set_num_threads(threads)


def http(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def same(remote: RemoteBriefedWorker, ask, local_answers) -> None:
    """`ask()` on the remote worker gives the in-process answers: exactly where its cache was hit, up to the
    rebuild (prefill count, float rounding) where the request reached a replica without it."""
    before = remote.stats().hits
    got = ask()
    exact = remote.stats().hits > before
    got, want = (got, local_answers) if isinstance(got, list) else ([got], [local_answers])
    assert [comparable(a, not exact) for a in got] == [comparable(a, not exact) for a in want]


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_the_service_answers_as_the_in_process_worker_and_logs_the_same_calls(service, local):
    from rlm import RLM, Budgets

    remote = RemoteBriefedWorker(url=service["url"])
    assert remote.describe()["model"] == local.describe()["model"] and remote.describe()["reserve"] == 128
    q = "What is the code?"
    for n in range(3):
        text = trajectory("OSPREY-3", calls=n)
        same(remote, lambda: remote.answer(q, text), local.answer(q, text))
        time.sleep(0.5)   # routing learns where the trajectory is (docs/service.md); a miss would be rebuilt
    queries = ["Which part?", "What is the code?", "Where were the gulls?"]
    text = trajectory("OSPREY-3", calls=4)
    same(remote, lambda: remote.answer_batch(queries, text), local.answer_batch(queries, text))
    assert remote.stats().hits >= 2
    # a run: the same worker-call events (the worker's record of each call), whoever answers
    steps = [f"```repl\nprint('step {i}: ' + context[:60])\nx = worker('What is the code? ({i})')\n```"
             for i in range(4)] + ["FINAL(done)"]
    runs = {}
    for name, worker in (("remote", remote), ("local", BriefedWorker(lm=local.lm, **OPTIONS))):
        res = RLM(ScriptedPolicy(steps), worker, budgets=Budgets(max_iterations=10)).run(
            "What is the code?", "The archive note says the code is OSPREY-3. " * 8)
        assert res.stop_reason == "final"
        runs[name] = [(e.query, comparable(e.result, rebuilt=True)) for e in res.worker_events()]
    assert len(runs["remote"]) == 4 and runs["remote"] == runs["local"]
    s = remote.stats()
    print(f"\nequality: {s.calls} calls, hit rate {s.hit_rate:.2f}, replicas {sorted(s.replicas)}")


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_a_trajectory_stays_on_its_replica_and_a_forced_miss_rebuilds_it(service, local):
    remote = RemoteBriefedWorker(url=service["url"])
    for n in range(6):
        remote.sync(trajectory("PLOVER-9", calls=n))
        time.sleep(0.5)   # Serve's routers learn where an id is held within about 0.3 s (docs/service.md)
    s = remote.stats()
    assert s.calls == 6 and s.new == 1 and s.hits + s.misses + s.behind == 5
    assert s.hit_rate >= 0.8, s            # best-effort affinity: the calls of one trajectory stay on its replica
    print(f"\nrouting: {s.hits} hits of 5 calls on a known trajectory (hit rate {s.hit_rate:.2f}), "
          f"{s.misses} misses, {s.behind} behind")
    # forced miss: the client's trajectory gets an id no replica holds, as after a restart; rebuilt, same answer
    (traj,) = remote._trajectories.values()
    remote._trajectories = type(remote._trajectories)({"forgotten0": traj})
    traj.id = "forgotten0"
    text = trajectory("PLOVER-9", calls=6)
    assert comparable(remote.answer("What is the code?", text)) == comparable(local.answer("What is the code?", text))
    s = remote.stats()
    assert s.misses >= 1 and s.rebuilt >= 1


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_bad_requests_get_a_4xx_and_leave_other_runs_alone(service, local):
    url = service["url"]
    other = RemoteBriefedWorker(url=url)
    held = trajectory("GANNET-5", calls=1)
    other.answer("What is the code?", held)
    local.answer("What is the code?", held)
    (tid,) = other._trajectories
    bad = {"trajectory_id": "unknown-run", "offset": 10, "prefix_sha256": sha256("x" * 10), "text": "more"}
    status, body = http(f"{url}/call", json.dumps(bad).encode(), {MULTIPLEX_HEADER: "unknown-run"})
    assert (status, body["code"]) == (404, "unknown_trajectory") and "send the whole text" in body["message"]
    # an append that does not extend the other run's text, under its own id: 409 where it is held (nothing changes),
    # 404 where it is not (offset > 0: nothing is made)
    wrong = {"trajectory_id": tid, "offset": len(held), "prefix_sha256": sha256("not the text"), "text": "x"}
    codes = set()
    for _ in range(4):
        status, body = http(f"{url}/call", json.dumps(wrong).encode(), {MULTIPLEX_HEADER: tid})
        codes.add((status, body["code"]))
        assert "does not extend" in body["message"] or "holds no trajectory" in body["message"]
    assert codes <= {(409, "conflict"), (404, "unknown_trajectory")} and (409, "conflict") in codes
    # a rewrite from offset 0 under its id: 409 where it is held; a replica that does not hold the id takes it as a
    # new trajectory (ids are random, known to their client): the run moves to a new id there, and goes on
    rewrite = {"trajectory_id": tid, "offset": 0, "prefix_sha256": EMPTY_SHA256, "text": "Rewritten text"}
    status, body = http(f"{url}/call", json.dumps(rewrite).encode(), {MULTIPLEX_HEADER: tid})
    assert (status, body.get("code", body.get("outcome"))) in ((409, "conflict"), (200, "new")), body
    big = {"trajectory_id": "big-run", "offset": 0, "prefix_sha256": EMPTY_SHA256, "text": "x" * 70_000}
    status, body = http(f"{url}/call", json.dumps(big).encode(), {MULTIPLEX_HEADER: "big-run"})
    assert (status, body["code"]) == (413, "too_large") and "--max-request-bytes" in body["message"]
    for payload, code in ((b"not json", 400), (json.dumps({"trajectory_id": "x"}).encode(), 422),
                          (json.dumps({**bad, "trajectory_id": "other"}).encode(), 422)):
        status, body = http(f"{url}/call", payload, {MULTIPLEX_HEADER: "unknown-run"})
        assert status == code, body
    assert http(f"{url}/nowhere")[0] == 404
    # the client turns a refusal into one clear error
    with pytest.raises(ServiceError, match="answered 413 too_large: the request is"):
        RemoteBriefedWorker(url=url).answer("q", "y" * 70_000)
    # the other run goes on: its next call extends its cache (a hit, or a rebuild where the rewrite made a copy) and
    # answers as in-process
    grown = trajectory("GANNET-5", calls=2)
    answer = other.answer("What is the code?", grown)
    s = other.stats()
    assert s.failures == 0 and s.hits + s.misses + s.behind == 1
    assert comparable(answer, s.hits == 0) == comparable(local.answer("What is the code?", grown), s.hits == 0)


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_the_replicas_keep_their_caches_within_the_byte_budget(service, local):
    remote = RemoteBriefedWorker(url=service["url"])
    texts = [trajectory(f"TERN-{i}", calls=i % 3) for i in range(12)]
    replies = [remote.sync(text) for text in texts]
    s = remote.stats()
    assert s.budget_bytes == BUDGET and 0 < s.peak_bytes <= BUDGET
    assert all(r.replica_bytes <= BUDGET for r in replies) and sum(r.evicted for r in replies) >= 1
    # twelve trajectories of about 285 KiB (half of it the archive's representatives and token states) on two replicas
    # of 928 KiB: a trajectory whose replica took more than the budget after it (least recently used first) was
    # evicted there, and is rebuilt on demand (its prefill is counted where it happened: in the sync, or in the rebuild)
    gone = next(i for i, r in enumerate(replies)
                if r.cache_bytes + sum(later.cache_bytes for later in replies[i + 1:] if later.replica == r.replica)
                > BUDGET)
    assert comparable(remote.answer("What is the code?", texts[gone]), True) == comparable(
        local.answer("What is the code?", texts[gone]), True)
    assert remote.stats().misses == 1
    stats = [remote.service_stats() for _ in range(4)]
    assert all(st.cache_bytes <= st.peak_bytes <= BUDGET for st in stats)
    print(f"\nbudget: peak {s.peak_bytes:,} of {BUDGET:,} bytes per replica")


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_a_killed_replica_is_retried_and_its_cache_rebuilt(service, local):
    remote = RemoteBriefedWorker(url=service["url"], retries=6, backoff_s=0.5)
    text = trajectory("SKUA-2", calls=1)
    first = remote.answer("What is the code?", text)
    (replica,) = remote.stats().replicas
    pid = next(st.pid for st in (remote.service_stats() for _ in range(40)) if st.replica == replica)
    os.kill(pid, signal.SIGKILL)                       # the replica's process dies, its caches with it
    grown = trajectory("SKUA-2", calls=2)
    again = remote.answer("What is the code?", grown)  # retried until a live replica rebuilds the cache
    assert comparable(again) == comparable(local.answer("What is the code?", grown)) and first.text == again.text
    s = remote.stats()
    assert s.failures == 0 and (s.retries >= 1 or s.misses >= 1)
    print(f"\nkill: answered after {s.retries} retries and {s.misses} misses")


HANDLE_DRIVER = """
import json, sys
from agents import RemoteBriefedWorker
from agents.service import CallRequest, ServiceError
from agents.service.protocol import EMPTY_SHA256
from tests.test_service import comparable, trajectory
remote = RemoteBriefedWorker(app="briefed-worker", address=sys.argv[1])
answer = remote.answer("What is the code?", trajectory("AUK-8", calls=1))
(tid,) = remote._trajectories
try:   # a rewrite: refused where the id is held, a miss elsewhere
    remote._send(CallRequest(trajectory_id=tid, offset=0, prefix_sha256=EMPTY_SHA256, text="Rewritten"))
    refused = None
except ServiceError as e:
    refused = [e.status, e.code]
print(json.dumps({"answer": comparable(answer), "service": remote.describe()["service"], "refused": refused}))
"""


@pytest.mark.slow   # a second Ray driver joins the cluster (a few seconds): make test runs it, the fast tier not
def test_the_handle_path_answers_the_same(service, local):
    """A driver on the Ray cluster (another process, as an orchestrator there would be) through deployment handles.
    Ray 2.60 turns token authentication on for a cluster that `ray.init()` starts (the token in ~/.ray/auth_token):
    a driver joining it by address sets RAY_AUTH_MODE=token (docs/service.md)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run([sys.executable, "-c", HANDLE_DRIVER, service["ray_address"]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["service"] == "Serve application 'briefed-worker'"
    assert got["answer"] == comparable(local.answer("What is the code?", trajectory("AUK-8", calls=1)))
    assert tuple(got["refused"]) in ((409, "conflict"), (404, "unknown_trajectory"))


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_rlm_run_uses_the_service(service, tmp_path, capsys):
    from rlm.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text("The archive note says the code is PUFFIN-6. " * 3)
    log = tmp_path / "run.jsonl"
    code = main(["run", "--context", str(doc), "--query", "What is the code?", "--worker-backend", "service",
                 "--worker-base-url", service["url"], "--chunk-chars", "80", "--quiet", "--log", str(log)])
    out = capsys.readouterr().out
    assert code in (0, 1) and "worker:briefed" in out
    events = [json.loads(line) for line in log.read_text().splitlines()]
    calls = [e for e in events if e["type"] == "worker_call"]
    assert calls and all(c["result"] and c["result"]["briefing"] for c in calls)
    assert events[0]["worker"]["service"] == service["url"]


@pytest.mark.slow   # starts the real service (Ray Serve, 2 replicas): make test runs it, the fast tier not
def test_ctrl_c_stops_the_service(service):
    proc = service["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    err = (service["folder"] / "stderr.txt").read_text()
    assert "rlm serve-worker: interrupted (Ctrl-C)" in err
    with pytest.raises(ServiceUnavailable):
        RemoteBriefedWorker(url=service["url"], retries=0).answer("q", "t")
