"""worker_batch against an HTTP worker: one batch of queries, one call after another or several in flight.

    python -m benchmarks.concurrency_bench                   # pools 1, 4 and 8; writes the JSON and prints the table
    python -m benchmarks.concurrency_bench --readme          # ... and the concurrency-bench block of docs/benchmarks.md
    python -m benchmarks.concurrency_bench --report docs/results/concurrency/concurrency_bench.json [--readme]

An RLM run (a scripted policy, the real sandbox) whose cells each run `worker_batch(queries)` with `--queries`
queries; the worker is the text worker on `OpenAIChatBackend`, against a loopback OpenAI-compatible server
(`LoopbackChatServer`) that answers each request after `--delay` seconds. For each pool size
(`Budgets.max_concurrent_subcalls`): the median, min and max over `--repeats` batches of the cell's wall time, and
the most requests the server had in flight at once. Nothing but loopback is reached; no model is loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks import readme

BLOCK = "concurrency-bench"
OUT = "docs/results/concurrency"


class LoopbackChatServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that answers each request after `delay_s` seconds
    ("answer N" for the Nth request), counting the requests it has in flight (`in_flight`, `max_in_flight`)."""

    def __init__(self, delay_s: float = 0.2) -> None:
        self.delay_s = delay_s
        self.count = self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.count += 1
                    n = server.count
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                body = json.dumps({"id": str(n), "object": "chat.completion", "model": "loopback", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"answer {n}"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self) -> None:
        with self.lock:
            self.count = self.max_in_flight = 0

    def __enter__(self) -> "LoopbackChatServer":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def measure(server: LoopbackChatServer, pool: int, queries: int, repeats: int) -> dict[str, Any]:
    """`repeats` cells of `worker_batch` of `queries` queries in one run with a pool of `pool`: their wall times."""
    from agents import OpenAIChatBackend, ScriptedPolicy, Step, TextWorker
    from rlm import RLM, Budgets

    qs = [f"Question {i}: what does the text above say?" for i in range(queries)]
    worker = TextWorker(backend=OpenAIChatBackend(base_url=server.url, api_key="none", model="loopback",
                                                  max_retries=0))
    steps = [Step(code=f"answers = worker_batch({qs!r})\nprint(len(answers))") for _ in range(repeats)]
    server.reset()
    budgets = Budgets(max_iterations=repeats + 1, max_worker_calls=None, max_concurrent_subcalls=pool)
    res = RLM(ScriptedPolicy(steps), worker, budgets=budgets).run("How fast is a batch?", "a short context")
    cells = [e for e in res.events if e.type == "output"]
    if len(cells) != repeats or any(e.error or e.stdout.strip() != str(queries) for e in cells):
        raise RuntimeError(f"pool {pool}: a batch failed: {[e.error or e.stdout for e in cells]}")
    samples = [round(e.duration_s, 4) for e in cells]
    return dict(pool=pool, median_s=round(statistics.median(samples), 4), min_s=min(samples), max_s=max(samples),
                samples=samples, max_in_flight=server.max_in_flight, requests=server.count)


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    base = next((r["median_s"] for r in rows if r["pool"] == 1), None)
    lines = [f"`worker_batch` of {result['queries']} queries, text worker on a loopback server that answers each "
             f"request after {result['delay_s']:g} s; median of {result['repeats']} batches ({result['machine']}). "
             f"Measured by `{result['command']}`.", "",
             "| `max_concurrent_subcalls` | median s | min / max s | requests in flight at most | vs. pool 1 |",
             "|---|---|---|---|---|"]
    for r in rows:
        speedup = f"{base / r['median_s']:.1f}x" if base else "-"
        lines.append(f"| {r['pool']} | {r['median_s']:.3f} | {r['min_s']:.3f} / {r['max_s']:.3f} | "
                     f"{r['max_in_flight']} | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.concurrency_bench", description=__doc__.split("\n")[0])
    p.add_argument("--delay", type=float, default=0.2, help="seconds the server takes per request (default 0.2)")
    p.add_argument("--queries", type=int, default=8, help="queries per worker_batch (default 8)")
    p.add_argument("--pools", type=int, nargs="+", default=[1, 4, 8], help="max_concurrent_subcalls values")
    p.add_argument("--repeats", type=int, default=5, help="batches per pool size (the median is reported)")
    p.add_argument("--out", default=OUT, help=f"where concurrency_bench.json goes (default {OUT})")
    p.add_argument("--readme", action="store_true", help="rewrite the concurrency-bench block of docs/benchmarks.md")
    p.add_argument("--report", metavar="JSON", help="no run: the table of a concurrency_bench.json")
    args = p.parse_args(argv)
    if args.report:
        result = json.loads(Path(args.report).read_text())
    else:
        given = sys.argv[1:] if argv is None else argv
        result = dict(command=" ".join(["python -m benchmarks.concurrency_bench", *given]), delay_s=args.delay,
                      queries=args.queries, repeats=args.repeats,
                      machine=f"{platform.machine()}, {os.cpu_count()} cores", rows=[])
        with LoopbackChatServer(args.delay) as server:
            for pool in args.pools:
                result["rows"].append(measure(server, pool, args.queries, args.repeats))
                r = result["rows"][-1]
                print(f"pool {pool}: median {r['median_s']:.3f}s, {r['max_in_flight']} in flight at most", flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "concurrency_bench.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out / 'concurrency_bench.json'}")
    print(markdown(result), end="")
    if args.readme:
        readme.write_block(BLOCK, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
