"""`rlm` command line: run, demo, repl, view."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _budget(value: str) -> float | int:
    """A kept budget: a ratio in (0, 1] ("0.2") or a number of positions ("300")."""
    try:
        return int(value)
    except ValueError:
        f = float(value)
        if not 0 < f <= 1:
            raise argparse.ArgumentTypeError("a float budget is a ratio in (0, 1]")
        return f


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker", choices=["briefed", "text", "plain"], default="briefed")
    p.add_argument("--model", default=None, help="local Hugging Face model directory (default: embedded SmolLM2-135M)")
    p.add_argument("--tau", type=float, default=1.0, help="briefed worker: MAD threshold (higher keeps less)")
    p.add_argument("--budget", type=_budget, default=None, help="briefed worker: keep this ratio or count instead")
    p.add_argument("--max-new-tokens", type=int, default=64, help="worker answer length")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _make_worker(args: argparse.Namespace) -> Any:
    import briefing
    from agents import make_worker

    lm = briefing.load_model(args.model)
    extra = {"tau": args.tau, "budget": args.budget} if args.worker == "briefed" else {}
    return make_worker(args.worker, lm=lm, max_new_tokens=args.max_new_tokens, **extra), lm


def _set_threads(args: argparse.Namespace) -> None:
    """--threads N: torch intra-op threads (1 avoids oversubscription when other jobs share the cores)."""
    n = getattr(args, "threads", None)
    if n:
        import torch

        torch.set_num_threads(int(n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm", description="latent-briefing RLM runtime")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("run", help="answer a query about a context file")
    p.add_argument("--context", required=True, help="context file ('-' for stdin)")
    p.add_argument("--query", required=True)
    p.add_argument("--policy", choices=["chunk-scan", "llm"], default="chunk-scan")
    _add_worker_args(p)
    p.add_argument("--chunk-chars", type=int, default=1500, help="chunk-scan: characters per chunk")
    p.add_argument("--backend", choices=["openai", "local"], default="openai",
                   help="llm policy: OpenAI-compatible server (OPENAI_BASE_URL/OPENAI_API_KEY/OPENAI_MODEL) or local model")
    p.add_argument("--base-url", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--llm-model", default=None, help="llm policy: model name on the server")
    p.add_argument("--max-iterations", type=int, default=20)
    p.add_argument("--max-worker-calls", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--max-wall-s", type=float, default=None)
    p.add_argument("--cell-timeout", type=float, default=30.0, help="seconds per REPL cell (worker calls excluded)")
    p.add_argument("--log", default=None, help="JSONL log of every event")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")

    d = sub.add_parser("demo", help="chunk-scan on an essay: briefed worker vs text worker (offline)")
    d.add_argument("--essay", default=None, help="file name in pg_essays/ (default foundervisa.txt)")
    d.add_argument("--query", default=None)
    d.add_argument("--max-chars", type=int, default=None, help="use only the start of the essay")
    d.add_argument("--chunk-chars", type=int, default=600)
    d.add_argument("--tau", type=float, default=1.0)
    d.add_argument("--budget", type=_budget, default=None)
    d.add_argument("--max-new-tokens", type=int, default=48)
    d.add_argument("--model", default=None)
    d.add_argument("--log-dir", default=None, help="write demo-briefed.jsonl / demo-text.jsonl here")
    d.add_argument("--workers", default="briefed,text", help="comma list of briefed,text,plain")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")

    r = sub.add_parser("repl", help="interactive sandbox console with a worker() primitive")
    _add_worker_args(r)
    r.add_argument("--context", default=None, help="file loaded as `context`")
    r.epilog = "Other options (-c CODE, --timeout, -q, ...) are passed to the sandbox console (python -m repl -h)."

    b = sub.add_parser("bench", help="benchmark and evaluation harness (rlm bench --help)", add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)

    v = sub.add_parser("view", help="readable rendering of a trajectory log (ours or alexzhang13/rlm's)")
    v.add_argument("log")
    v.add_argument("--full", action="store_true", help="do not shorten long texts")
    v.add_argument("--max-chars", type=int, default=600)
    v.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    v.add_argument("--trajectory", action="store_true", help="print the root run's trajectory text as the worker reads it")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from agents import ChunkScanPolicy, LLMPolicy, LocalChatBackend, OpenAIChatBackend
    from repl import SandboxConfig
    from rlm import RLM, Budgets
    from rlm.progress import Progress

    context = sys.stdin.read() if args.context == "-" else Path(args.context).read_text(encoding="utf-8", errors="replace")
    worker, lm = _make_worker(args)
    if args.policy == "chunk-scan":
        policy = ChunkScanPolicy(chunk_chars=args.chunk_chars)
    elif args.backend == "local":
        policy = LLMPolicy(LocalChatBackend(lm, max_new_tokens=512))
    else:
        policy = LLMPolicy(OpenAIChatBackend(base_url=args.base_url, api_key=args.api_key, model=args.llm_model))
    budgets = Budgets(max_iterations=args.max_iterations, max_worker_calls=args.max_worker_calls,
                      max_tokens=args.max_tokens, max_wall_s=args.max_wall_s)
    rlm = RLM(policy, worker, sandbox_config=SandboxConfig(timeout_s=args.cell_timeout), budgets=budgets,
              log_path=args.log, on_event=None if args.quiet else Progress(sys.stderr))
    res = rlm.run(args.query, context)
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0
    print(f"\nAnswer: {res.answer}")
    print(f"Stop reason: {res.stop_reason}{' (partial answer)' if res.partial else ''}; {res.iterations} iterations, "
          f"{res.worker_calls} worker calls, {res.wall_s:.1f}s")
    ratio = res.median_kept_ratio()
    if ratio is not None:
        print(f"Median kept ratio: {ratio:.1%}")
    print()
    print(res.usage_table())
    print("\n".join(res.graph_summary.lines()))
    if args.log:
        print(f"Log: {args.log}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rlm import demo

    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    demo.main(essay=args.essay or demo.DEFAULT_ESSAY, query=args.query or demo.DEFAULT_QUERY, max_chars=args.max_chars,
              chunk_chars=args.chunk_chars, tau=args.tau, budget=args.budget, max_new_tokens=args.max_new_tokens,
              model=args.model, log_dir=args.log_dir, workers=workers)
    return 0


def console_primitives(worker: Any, context: str | None = None) -> dict[str, Any]:
    """`worker` / `worker_batch` for the interactive console. The worker's trajectory is the session's
    earlier worker calls (the console's own cells are not recorded here)."""
    from rlm.events import RunStart, WorkerCall
    from rlm.trajectory import Trajectory

    traj = Trajectory("console")
    traj.append(RunStart(query="(interactive session)", context_length=len(context or "")))

    def ask(query: Any) -> str:
        q = query if isinstance(query, str) else str(query)
        ans = worker.answer(q, traj.text)
        n = sum(1 for e in traj.events if e.type == "worker_call") + 1
        traj.append(WorkerCall(call_id=f"console.{n}", index=n, query=q, answer=ans.text, worker=ans.worker,
                               input_tokens=ans.input_tokens, text_handoff_tokens=ans.text_handoff_tokens,
                               kept=ans.kept, total=ans.total, latency_s=ans.latency_s))
        return ans.text

    def ask_batch(queries: Any) -> list[str]:
        return [ask(q) for q in queries]

    prims: dict[str, Any] = {"worker": ask, "worker_batch": ask_batch}
    if context is not None:
        prims["context"] = context
    return prims


def cmd_repl(args: argparse.Namespace) -> int:
    from repl import console

    context = Path(args.context).read_text(encoding="utf-8", errors="replace") if args.context else None
    worker, _ = _make_worker(args)
    rest = [a for a in getattr(args, "console_args", []) if a != "--"]
    return int(console.main(rest, primitives=console_primitives(worker, context)) or 0)


def cmd_view(args: argparse.Namespace) -> int:
    from rlm.trajectory import replay
    from rlm.view import view

    if args.trajectory:
        print(replay(args.log).text)
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    try:
        print(view(args.log, None if args.full else args.max_chars, color))
    except (OSError, ValueError) as e:
        print(f"rlm view: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser, its arguments verbatim (argparse REMAINDER reorders options)
        from rlm.bench.cli import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in ("repl", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.console_args = unknown
    if args.command == "bench":  # its own parser: rlm bench --help
        from rlm.bench.cli import main as bench_main

        return bench_main(args.bench_args + unknown)
    handlers = {"run": cmd_run, "demo": cmd_demo, "repl": cmd_repl, "view": cmd_view}
    if args.command not in handlers:
        parser.print_help()
        return 2
    _set_threads(args)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
