"""The briefed-worker service under load and faults, on loopback: concurrent RLM runs against `rlm serve-worker`'s
deployment, against the same runs with in-process briefed workers.

    python -m benchmarks.service_bench --out docs/results/service --readme docs/benchmarks.md
    python -m benchmarks.service_bench --report docs/results/service/service_bench.json   # the table again
    python -m benchmarks.service_bench --model tiny --runs 4 --calls 3 --kill-runs 2      # a quick look

What it does, in one process (Ray started in it, as `rlm serve-worker` does):
1. start-up: the service without its HTTP proxy (deployment handles only), stopped, then with it (the one used);
2. in-process: `--runs` real RLM runs (a scripted orchestrator in the sandboxed REPL; each of its `--calls` steps
   prints the next part of the run's context and calls `worker(...)`), all at once in threads, each with its own
   `BriefedWorker` on one loaded model, the calls serialised on it (one model, `--replicas` torch threads);
3. service: the same runs, each with its own `RemoteBriefedWorker` over HTTP to `--replicas` replicas (one torch
   thread each, so both sides use the same cores);
4. a kill: `--kill-runs` of the same runs again, and one replica killed (`ray.kill`) once `--kill-after` of their
   calls have been answered. Serve starts a new replica; the clients retry with the whole text.
Checks: each run's context holds its own secret, which only its trajectory holds; an answer is lost when a call has
no answer in its run's log, crossed when it names another run's secret or its token counts are not those of its
own run's call in-process; answers identical to in-process are counted. The caches' bytes per replica (peak, as the
replicas report after each request) against the budget. Latency: per call, as the orchestrator waits for it (p50
with its bootstrap 95% interval, p95); throughput: calls per second of wall time over all runs.
Writes service_bench.json, service_bench.md and service_bench.png to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import string
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from agents import BriefedWorker, RemoteBriefedWorker, ScriptedPolicy, Worker, WorkerAnswer
from benchmarks.readme import DOC, update_readme
from benchmarks.stats import bootstrap_ci

BLOCK = "service-bench"
QUESTION = "What is the vault code? Reply with the code only."
FILLER = ("The survey team walked the harbour wall at dawn, counted the gulls on the breakwater and noted the tide, "
          "the wind and the colour of the water before the boats went out. ")


def secret(i: int) -> str:
    rng = random.Random(i)
    return "".join(rng.choices(string.ascii_uppercase, k=2)) + "-" + "".join(rng.choices(string.digits, k=4))


def context(i: int, calls: int, part: int) -> str:
    """Run i's context: its secret near the start, then filler; each step prints the next `part` characters."""
    head = f"Run {i} archive. The vault code of this run is {secret(i)}. Keep it safe. "
    body = head + FILLER * (1 + calls * part // len(FILLER))
    return body[: max(len(head), calls * part)]


def steps(calls: int, part: int) -> list[str]:
    return [f"```repl\nprint(context[{k * part}:{(k + 1) * part}])\nanswer = worker({QUESTION!r})\nprint(answer)\n```"
            for k in range(calls)] + ["FINAL(answer)"]


class Timed(Worker):
    """A worker as the orchestrator sees it: each call's wall time (waiting for the model included)."""

    def __init__(self, inner: Worker, lock: Any = None, counter: dict | None = None) -> None:
        self.inner, self.lock, self.counter = inner, lock, counter
        self.name = inner.name
        self.latencies: list[float] = []

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        t0 = time.monotonic()
        with self.lock or nullcontext():
            ans = self.inner.answer(query, trajectory)
        self.latencies.append(time.monotonic() - t0)
        if self.counter is not None:
            with self.counter["lock"]:
                self.counter["n"] += 1
        return ans

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def run_all(workers: list[Timed], calls: int, part: int, on_start: Any = None) -> dict[str, Any]:
    """The runs, all at once (one thread each); their results and the wall time."""
    from rlm import RLM, Budgets

    results: list[Any] = [None] * len(workers)

    def go(i: int) -> None:
        rlm = RLM(ScriptedPolicy(steps(calls, part)), workers[i],
                  budgets=Budgets(max_iterations=calls + 2, max_worker_calls=calls))
        try:
            results[i] = rlm.run("What is the vault code?", context(i, calls, part))
        except Exception as e:   # a run that raised is reported as such (it lost its calls)
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,), name=f"run-{i}") for i in range(len(workers))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    if on_start is not None:
        on_start()
    for t in threads:
        t.join()
    return {"results": results, "wall_s": time.monotonic() - t0}


def answers_of(result: Any) -> list[WorkerAnswer | None]:
    """The worker's answer of each call in a run's log (None for a call that failed)."""
    if isinstance(result, Exception):
        return []
    return [e.result for e in result.worker_events()]


def check(results: list[Any], expected: list[list[WorkerAnswer | None]] | None, calls: int) -> dict[str, Any]:
    """Lost, crossed, identical and own-secret counts of a phase's runs (expected: the in-process answers)."""
    secrets = [secret(i) for i in range(len(results))]
    lost = crossed = identical = own = answered = errors = final = 0
    for i, res in enumerate(results):
        got = answers_of(res)
        final += not isinstance(res, Exception) and res.stop_reason == "final"
        errors += sum(a is None for a in got)
        lost += calls - sum(a is not None for a in got)
        for k, a in enumerate(got):
            if a is None:
                continue
            answered += 1
            own += secrets[i] in a.text
            foreign = any(s in a.text for j, s in enumerate(secrets) if j != i)
            want = expected[i][k] if expected is not None and k < len(expected[i]) else None
            mismatch = want is not None and (a.briefing.trajectory_tokens, a.text_handoff_tokens) != \
                (want.briefing.trajectory_tokens, want.text_handoff_tokens)
            crossed += foreign or mismatch
            identical += want is not None and a.text == want.text and a.input_tokens == want.input_tokens \
                and a.output_tokens == want.output_tokens
    return dict(runs=len(results), final=final, calls=calls * len(results), answered=answered, errors=errors,
                lost=lost, crossed=crossed, identical=identical, own_secret=own)


def latency(workers: list[Timed], wall_s: float) -> dict[str, Any]:
    lat = np.array([x for w in workers for x in w.latencies], dtype=float)
    if not len(lat):
        return dict(p50_s=None, p50_ci=[None, None], p95_s=None, throughput=0.0, wall_s=wall_s, latencies=[])
    lo, hi = bootstrap_ci(list(lat), stat="median")
    return dict(p50_s=float(np.median(lat)), p50_ci=[lo, hi], p95_s=float(np.percentile(lat, 95)),
                throughput=len(lat) / wall_s, wall_s=wall_s, latencies=[round(float(x), 4) for x in lat])


def client_figures(clients: list[RemoteBriefedWorker]) -> dict[str, Any]:
    stats = [c.stats() for c in clients]
    total = {k: sum(getattr(s, k) for s in stats) for k in ("new", "hits", "misses", "behind", "rebuilt",
                                                            "conflicts", "retries", "failures")}
    seen = total["hits"] + total["misses"] + total["behind"]
    peaks: dict[str, int] = {}
    budget = 0
    for s in stats:
        for rid, r in s.replicas.items():
            peaks[rid] = max(peaks.get(rid, 0), r["peak_bytes"])
            budget = max(budget, r["budget_bytes"])
    return dict(**total, hit_rate=total["hits"] / seen if seen else None, peak_bytes=peaks, budget_bytes=budget)


def load_model(name: str) -> Any:
    """The worker model: a known name or folder, or "tiny" (a random-weight Llama shape, byte tokenizer)."""
    import briefing

    if name == "tiny":
        import torch

        from benchmarks.gpu_bench import build

        return build("llama-3.1-8b", True, torch.device("cpu"), torch.float32)
    return briefing.load_model(name, device="cpu", dtype="float32")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import torch

    from agents.service import ServiceConfig
    from agents.service.app import replica_actors, start, stop

    lm = load_model(args.model)
    options = dict(max_new_tokens=args.max_new_tokens)
    config = ServiceConfig(lm=lm if args.model == "tiny" else None, model=None if args.model == "tiny" else args.model,
                           device="cpu", dtype="float32", cache_bytes=args.cache_bytes, threads=1, worker=options)

    def say(line: str) -> None:
        print(f"  {line}", flush=True)

    cpus = max(0.1, (os.cpu_count() or 2) / args.replicas / 2)
    print("start-up without the HTTP proxy (deployment handles):", flush=True)
    handles = start(config, replicas=args.replicas, http=False, cpus_per_replica=cpus, log=say)
    startup = {"handles": handles.figures()}
    stop(handles)
    print("start-up with the HTTP proxy:", flush=True)
    service = start(config, replicas=args.replicas, http=True, port=args.port, cpus_per_replica=cpus, log=say,
                    proxy_timeout_s=args.proxy_timeout)
    startup["http"] = service.figures()
    try:
        # in-process: one model, calls serialised on it, as many torch threads as the replicas have in all
        torch.set_num_threads(args.replicas)
        lock = threading.Lock()
        local = [Timed(BriefedWorker(lm=lm, **options), lock) for _ in range(args.runs)]
        print(f"in-process: {args.runs} runs x {args.calls} calls ...", flush=True)
        base = run_all(local, args.calls, args.part)
        expected = [answers_of(r) for r in base["results"]]
        inproc = dict(**check(base["results"], None, args.calls), **latency(local, base["wall_s"]))
        print(f"  {inproc['answered']} answers in {base['wall_s']:.0f}s", flush=True)
        torch.set_num_threads(1)

        clients = [RemoteBriefedWorker(url=service.url, retries=args.retries, backoff_s=0.5, timeout_s=600)
                   for _ in range(args.runs)]
        remote = [Timed(c) for c in clients]
        print(f"service: {args.runs} runs x {args.calls} calls over {args.replicas} replicas ...", flush=True)
        load = run_all(remote, args.calls, args.part)
        served = dict(**check(load["results"], expected, args.calls), **latency(remote, load["wall_s"]),
                      **client_figures(clients))
        print(f"  {served['answered']} answers in {load['wall_s']:.0f}s, hit rate {served['hit_rate']}", flush=True)

        kill: dict[str, Any] = {}
        if args.kill_runs:
            counter = {"n": 0, "lock": threading.Lock()}
            kill_clients = [RemoteBriefedWorker(url=service.url, retries=args.retries, backoff_s=0.5, timeout_s=600)
                            for _ in range(args.kill_runs)]
            timed = [Timed(c, counter=counter) for c in kill_clients]
            victims = replica_actors(service.app)
            at: dict[str, Any] = {}

            def killer() -> None:
                while counter["n"] < args.kill_after and time.monotonic() - t0 < 1800:
                    time.sleep(0.05)
                at["after_calls"], at["t"] = counter["n"], time.monotonic()
                ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
                print(f"  killed {victims[0]} after {counter['n']} answered calls", flush=True)
                while time.monotonic() - at["t"] < 600:
                    now = replica_actors(service.app)
                    if len(now) == args.replicas and victims[0] not in now:
                        at["replaced_s"] = time.monotonic() - at["t"]
                        break
                    time.sleep(0.5)

            t0 = time.monotonic()
            watcher = threading.Thread(target=killer, name="killer")
            print(f"kill: {args.kill_runs} runs x {args.calls} calls, a replica killed after {args.kill_after} "
                  "answered calls ...", flush=True)
            out = run_all(timed, args.calls, args.part, on_start=watcher.start)
            watcher.join()
            kill = dict(**check(out["results"], expected[: args.kill_runs], args.calls),
                        **latency(timed, out["wall_s"]), **client_figures(kill_clients),
                        killed_after_calls=at.get("after_calls"), replaced_s=at.get("replaced_s"),
                        stop_reasons=sorted({getattr(r, "stop_reason", type(r).__name__) for r in out["results"]}))
            print(f"  {kill['answered']} of {kill['calls']} answered, {kill['retries']} retries, "
                  f"{kill['misses']} misses, replaced in {kill['replaced_s']}s", flush=True)
    finally:
        stop(service)
    return dict(model=lm.name, runs=args.runs, calls_per_run=args.calls, replicas=args.replicas,
                max_new_tokens=args.max_new_tokens, cache_bytes=args.cache_bytes, startup=startup,
                inprocess=inproc, service=served, kill=kill)


# -- the report ---------------------------------------------------------------------------------------------------

def _s(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The table of a service_bench.json (what `--readme` writes into docs/benchmarks.md)."""
    s, b, k, up = result["service"], result["inprocess"], result.get("kill") or {}, result["startup"]
    peak = max(s["peak_bytes"].values(), default=0)
    lines = [f"<!-- generated by `{result['command']}` -->",
             f"{result['model']} on {result['machine']}: {result['runs']} concurrent RLM runs x "
             f"{result['calls_per_run']} worker calls, {result['replicas']} replicas (one torch thread each) against "
             f"in-process briefed workers (one model, {result['replicas']} threads), loopback HTTP.", "",
             "| | calls answered | lost | crossed | identical to in-process | p50 latency s (95% CI) | p95 s | "
             "calls/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in (("in-process", b), ("service", s), ("service, a replica killed", k)):
        if not r:
            continue
        same = "(reference)" if r is b else f"{r['identical']} / {r['answered']}"
        lines.append(f"| {name} | {r['answered']} / {r['calls']} | {r['lost']} | {r['crossed']} | {same} | "
                     f"{_s(r['p50_s'])} ({_s(r['p50_ci'][0])}-{_s(r['p50_ci'][1])}) | {_s(r['p95_s'])} | "
                     f"{_s(r['throughput'])} |")
    hs, hh = up["handles"], up["http"]
    lines += ["",
              f"- Affinity: hit rate {_s(s['hit_rate'])} ({s['hits']} hits, {s['misses']} misses rebuilt from the "
              f"text, {s['behind']} older copies caught up, of {s['hits'] + s['misses'] + s['behind']} calls on a "
              f"known trajectory); {s['retries']} retries.",
              f"- Memory: peak KV cache bytes per replica {peak:,} of a {s['budget_bytes']:,}-byte budget "
              f"({'within' if peak <= s['budget_bytes'] else 'OVER'} it).",
              f"- Answers naming the run's own secret: {b['own_secret']} / {b['answered']} in-process, "
              f"{s['own_secret']} / {s['answered']} through the service.",
              f"- Start-up: {_s(hh['total_s'], 1)} s with the HTTP proxy (Ray {_s(hh['ray_s'], 1)}, Serve "
              f"{_s(hh['serve_s'], 1)}, replicas with their model {_s(hh['ready_s'], 1)}, proxy answering "
              f"{_s(hh['http_s'], 1)}); {_s(hs['total_s'], 1)} s without it (handles only)."]
    if k:
        lines.append(f"- A replica killed after {k['killed_after_calls']} answered calls: {k['answered']} of "
                     f"{k['calls']} calls answered, {k['lost']} lost, {k['errors']} errors in the run logs, runs "
                     f"ended {', '.join(k['stop_reasons'])}; {k['retries']} retries and {k['misses']} misses "
                     f"rebuilt the caches; Serve replaced the replica in {_s(k['replaced_s'], 1)} s.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, key in (("in-process", "inprocess"), ("service", "service"), ("service, replica killed", "kill")):
        lat = sorted((result.get(key) or {}).get("latencies") or [])
        if lat:
            ax[0].plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=name)
    ax[0].set_xlabel("worker call latency (s)")
    ax[0].set_ylabel("share of calls")
    ax[0].legend()
    ax[0].set_title("latency as the orchestrator waits")
    names = [n for n, k in (("in-process", "inprocess"), ("service", "service"), ("killed", "kill")) if result.get(k)]
    ax[1].bar(names, [result[k]["throughput"] for k in ("inprocess", "service", "kill") if result.get(k)])
    ax[1].set_ylabel("calls per second")
    ax[1].set_title(f"{result['runs']} concurrent runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.service_bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a known model, a model folder, or tiny (random weights)")
    p.add_argument("--runs", type=int, default=16, help="concurrent orchestrator runs (default 16)")
    p.add_argument("--calls", type=int, default=16, help="worker calls per run (default 16)")
    p.add_argument("--part", type=int, default=160, help="context characters each step prints (default 160)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--cache-bytes", type=int, default=2 ** 30, help="KV bytes per replica (default 1 GiB)")
    p.add_argument("--kill-runs", type=int, default=8, help="runs of the kill phase (0: none)")
    p.add_argument("--kill-after", type=int, default=24, help="answered calls before the kill")
    p.add_argument("--retries", type=int, default=6, help="the clients' retries")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--proxy-timeout", type=float, default=180.0)
    p.add_argument("--out", default="bench_out/service")
    p.add_argument("--report", metavar="JSON", help="only print (and with --readme, write) the table of a JSON")
    p.add_argument("--readme", metavar="DOC", nargs="?", const=str(DOC), default=None,
                   help=f"write the {BLOCK} block of this file (default docs/benchmarks.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        result = json.loads(Path(args.report).read_text())
    else:
        import torch

        given = sys.argv[1:] if argv is None else argv
        result = measure(args)
        result["command"] = " ".join(["python -m benchmarks.service_bench", *given])
        result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__.split('+')[0]}"
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "service_bench.json").write_text(json.dumps(result, indent=1))
        (out / "service_bench.md").write_text(markdown(result))
        plot(result, out / "service_bench.png")
    text = markdown(result)
    print(text, end="")
    if args.readme:
        changed = update_readme(BLOCK, text, Path(args.readme))
        print(f"{args.readme}: {BLOCK} block {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
