"""`rlm` command line: run, demo, repl, view, doctor."""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # torch: imported only by the commands that load a model
    import briefing
    from agents import Worker


class _Parser(argparse.ArgumentParser):
    """Bad values end with one line naming the argument (argparse prints the whole usage first) and exit 2."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _at_least(low: int, hint: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{hint}, got {text!r}")
        return value
    return parse


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _ratio(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], got {text!r} (for a count use --keep-tokens)")
    return value


def _budget_removed(text: str) -> None:
    raise argparse.ArgumentTypeError("was replaced: use --keep-ratio R (a share in (0, 1]) or --keep-tokens N "
                                     "(positions, >= 1), or --keep-none")


def _add_selector_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tau", type=_number, default=None,
                   help="briefed worker: keep positions above median + tau * MAD of the score (default 1.0; higher keeps less)")
    g.add_argument("--keep-ratio", type=_ratio, default=None, help="briefed worker: keep this share in (0, 1] instead")
    g.add_argument("--keep-tokens", type=_at_least(1, " (use --keep-none to keep no position)"), default=None,
                   help="briefed worker: keep this many positions instead")
    g.add_argument("--keep-all", action="store_true", help="briefed worker: the full trajectory cache (no compaction)")
    g.add_argument("--keep-none", action="store_true", help="briefed worker: no trajectory position")
    g.add_argument("--budget", type=_budget_removed, default=None, help=argparse.SUPPRESS)


def selector_from_args(args: argparse.Namespace) -> briefing.Selector | None:
    """The `briefing.Selector` the options ask for, or None (the worker's default, AttentionMatching(tau=1.0))."""
    if args.tau is None and args.keep_ratio is None and args.keep_tokens is None and not args.keep_all \
            and not args.keep_none:
        return None
    import briefing

    if args.keep_all:
        return briefing.KeepAll()
    if args.keep_none:
        return briefing.KeepNone()
    if args.keep_ratio is not None:
        return briefing.AttentionMatching(ratio=args.keep_ratio)
    if args.keep_tokens is not None:
        return briefing.AttentionMatching(tokens=args.keep_tokens)
    return briefing.AttentionMatching(tau=args.tau)


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker", choices=["briefed", "text", "plain"], default="briefed")
    p.add_argument("--model", default=None, help="local Hugging Face model directory (default: embedded SmolLM2-135M)")
    _add_selector_args(p)
    p.add_argument("--max-new-tokens", type=_at_least(1), default=64, help="worker answer length")
    p.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")


def _check_worker_args(parser: _Parser, args: argparse.Namespace) -> None:
    if getattr(args, "worker", "briefed") != "briefed" and selector_from_args(args) is not None:
        parser.error(f"--tau / --keep-* choose the briefed worker's selection; --worker {args.worker} has none")


def _check_file(parser: _Parser, option: str, path: str | None) -> None:
    if path and path != "-" and not Path(path).is_file():
        parser.error(f"argument {option}: no such file: {path}")


def _make_worker(args: argparse.Namespace) -> tuple[Worker, briefing.LoadedModel]:
    import briefing
    from agents import make_worker

    lm = briefing.load_model(args.model)
    extra = {"selector": selector_from_args(args)} if args.worker == "briefed" else {}
    return make_worker(args.worker, lm=lm, max_new_tokens=args.max_new_tokens, **extra), lm


def _set_threads(args: argparse.Namespace) -> None:
    """--threads N: torch intra-op threads (1 avoids oversubscription when other jobs share the cores)."""
    n = getattr(args, "threads", None)
    if n:
        import torch

        torch.set_num_threads(int(n))


def build_parser() -> _Parser:
    parser = _Parser(prog="rlm", description="latent-briefing RLM runtime")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("run", help="answer a query about a context file")
    p.add_argument("--context", required=True, help="context file ('-' for stdin)")
    p.add_argument("--query", required=True)
    p.add_argument("--policy", choices=["chunk-scan", "llm"], default="chunk-scan")
    _add_worker_args(p)
    p.add_argument("--chunk-chars", type=_at_least(1), default=1500, help="chunk-scan: characters per chunk")
    p.add_argument("--backend", choices=["openai", "local"], default="openai",
                   help="llm policy: OpenAI-compatible server (OPENAI_BASE_URL/OPENAI_API_KEY/OPENAI_MODEL) or local model")
    p.add_argument("--base-url", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--llm-model", default=None, help="llm policy: model name on the server")
    p.add_argument("--max-iterations", type=_at_least(1), default=20)
    p.add_argument("--max-worker-calls", type=_at_least(0), default=64)
    p.add_argument("--max-tokens", type=_at_least(1), default=None)
    p.add_argument("--max-wall-s", type=_positive, default=None)
    p.add_argument("--cell-timeout", type=_positive, default=30.0, help="seconds per REPL cell (worker calls excluded)")
    p.add_argument("--log", default=None, help="JSONL log of every event")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")

    d = sub.add_parser("demo", help="chunk-scan on an essay: briefed worker vs text worker (offline)")
    d.add_argument("--essay", default=None, help="file name in pg_essays/ (default foundervisa.txt)")
    d.add_argument("--query", default=None)
    d.add_argument("--max-chars", type=_at_least(1), default=None, help="use only the start of the essay")
    d.add_argument("--chunk-chars", type=_at_least(1), default=600)
    _add_selector_args(d)
    d.add_argument("--max-new-tokens", type=_at_least(1), default=48)
    d.add_argument("--model", default=None)
    d.add_argument("--log-dir", default=None, help="write demo-briefed.jsonl / demo-text.jsonl here")
    d.add_argument("--workers", default="briefed,text", help="comma list of briefed,text,plain")
    d.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")

    r = sub.add_parser("repl", help="interactive sandbox console with a worker() primitive")
    _add_worker_args(r)
    r.add_argument("--context", default=None, help="file loaded as `context`")
    r.epilog = "Other options (-c CODE, --timeout, -q, ...) are passed to the sandbox console (python -m repl -h)."

    b = sub.add_parser("bench", help="benchmark and evaluation harness (rlm bench --help)", add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)

    v = sub.add_parser("view", help="readable rendering of a trajectory log (ours or alexzhang13/rlm's)")
    v.add_argument("log")
    v.add_argument("--full", action="store_true", help="do not shorten long texts")
    v.add_argument("--max-chars", type=_at_least(1), default=600)
    v.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    v.add_argument("--trajectory", action="store_true", help="print the root run's trajectory text as the worker reads it")
    doc = sub.add_parser("doctor", help="which sandbox isolation layers are active on this machine, and why any is not")
    doc.add_argument("--json", action="store_true", help="the report as JSON")
    parser.commands = {"run": p, "demo": d, "repl": r, "bench": b, "view": v, "doctor": doc}
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
              chunk_chars=args.chunk_chars, selector=selector_from_args(args), max_new_tokens=args.max_new_tokens,
              model=args.model, log_dir=args.log_dir, workers=workers)
    return 0


def console_primitives(worker: Any, context: str | None = None) -> dict[str, Any]:
    """`worker` / `worker_batch` for the interactive console. The worker's trajectory is the session's
    earlier worker calls (the console's own cells are not recorded here)."""
    from agents.events import RunStart, WorkerCall
    from rlm.trajectory import Trajectory

    traj = Trajectory("console")
    traj.append(RunStart(query="(interactive session)", context_length=len(context or "")))

    def ask(query: Any) -> str:
        q = query if isinstance(query, str) else str(query)
        ans = worker.answer(q, traj.text)
        n = sum(1 for e in traj.events if e.type == "worker_call") + 1
        traj.append(WorkerCall(call_id=f"console.{n}", index=n, query=q, worker=ans.worker, result=ans))
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """The isolation layers a sandbox session gets here (`repl.layers()`); 1 if none can start."""
    import repl

    try:
        report = repl.layers()
    except repl.SandboxError as e:
        print(f"rlm doctor: the sandbox cannot start on this machine: {e}", file=sys.stderr)
        return 1
    print(report.model_dump_json(indent=2) if args.json else report.text())
    return 0


BENCH_MISSING = ("rlm bench: the benchmarks are not installed with the library; from a source checkout run "
                 "`pip install -e '.[bench]'`, then `rlm bench` there")


def load_bench() -> Callable[[list[str]], int] | None:
    """`benchmarks.rlm_bench.cli.main` from the source checkout (the top-level `benchmarks/` folder, next to the
    `rlm` package of an editable install, or the current directory), or None after one line on stderr."""
    import importlib

    checkout = Path(__file__).resolve().parents[1]
    for root in (None, checkout, Path.cwd()):
        if root is not None:
            if not (root / "benchmarks" / "rlm_bench").is_dir() or str(root) in sys.path:
                continue
            sys.path.append(str(root))
        try:
            return importlib.import_module("benchmarks.rlm_bench.cli").main
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] != "benchmarks":   # the folder is there, an extra is missing
                print(f"rlm bench: missing module {e.name!r}: run `pip install -e '.[bench]'` in the source "
                      "checkout", file=sys.stderr)
                return None
    print(BENCH_MISSING, file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser, its arguments verbatim (argparse REMAINDER reorders options)
        bench_main = load_bench()
        return 2 if bench_main is None else bench_main(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in ("repl", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.console_args = unknown
    if args.command == "bench":  # its own parser: rlm bench --help
        bench_main = load_bench()
        if bench_main is None:
            return 2
        return bench_main(args.bench_args + unknown)
    handlers = {"run": cmd_run, "demo": cmd_demo, "repl": cmd_repl, "view": cmd_view, "doctor": cmd_doctor}
    if args.command not in handlers:
        parser.print_help()
        return 2
    if args.command in ("run", "repl"):
        command = parser.commands[args.command]
        _check_worker_args(command, args)
        _check_file(command, "--context", args.context)
    _set_threads(args)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
