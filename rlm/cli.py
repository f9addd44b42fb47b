"""`rlm` command line: run, demo, repl, view, doctor, serve-worker."""
from __future__ import annotations

import argparse
import codecs
import math
import os
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


SIZE_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _size(text: str) -> int:
    """Bytes: an integer, or with a binary unit (512M, 2G, 1.5G; K/M/G/T, an optional 'iB' or 'B')."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in SIZE_UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)]) * SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 512M or 2G, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a size of at least 1 byte, got {text!r}")
    return int(value)


def _encoding(text: str) -> str:
    try:
        return codecs.lookup(text).name
    except LookupError:
        raise argparse.ArgumentTypeError(f"unknown encoding {text!r} (e.g. utf-8, latin-1, cp1252)") from None


def _budget_removed(text: str) -> None:
    raise argparse.ArgumentTypeError("was replaced: use --keep-ratio R (a share in (0, 1]) or --keep-tokens N "
                                     "(positions, >= 1), or --keep-none")


def _add_selector_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tau", type=_number, default=None,
                   help="briefed worker: keep positions above median + tau * MAD of the score "
                        "(default 1.0; higher keeps less)")
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


MODEL_HELP = ("the worker's model: a known name (smollm2-135m, the embedded default; gemma3-270m) or a local Hugging "
              "Face model directory")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:1")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the model's dtype: auto (bfloat16 on a GPU, float32 on a CPU)")


def load_model_from_args(args: argparse.Namespace) -> briefing.LoadedModel:
    """The local model --model, --device and --dtype ask for; a bad choice ends with its one-line error."""
    import briefing

    try:
        return briefing.load_model(args.model, device=args.device, dtype=args.dtype)
    except briefing.ModelLoadError as e:
        raise SystemExit(f"rlm: {e}") from None


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker", choices=["briefed", "text", "plain"], default=None,
                   help="who answers worker(query) (default: briefed; text with --worker-backend openai)")
    _add_model_args(p)
    p.add_argument("--worker-backend", choices=["local", "openai", "service"], default="local",
                   help="the local model; an OpenAI-compatible server (text/plain worker); or a briefed-worker "
                        "service started with `rlm serve-worker` (briefed worker)")
    p.add_argument("--worker-base-url", default=None,
                   help="--worker-backend openai: the server's API root (default: --base-url, else OPENAI_BASE_URL); "
                        "--worker-backend service: the URL `rlm serve-worker` printed (e.g. "
                        "http://127.0.0.1:8000/briefed)")
    p.add_argument("--worker-model", default=None,
                   help="--worker-backend openai: model name (default: --llm-model, else OPENAI_MODEL)")
    p.add_argument("--worker-api-key", default=None,
                   help="--worker-backend openai: API key (default: --api-key, else OPENAI_API_KEY)")
    _add_selector_args(p)
    p.add_argument("--max-new-tokens", type=_at_least(1), default=64, help="worker answer length")
    p.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--request-timeout", type=_positive, default=60.0,
                   help="seconds one request to a server may take, orchestrator's or worker's (default 60)")
    p.add_argument("--retries", type=_at_least(0), default=2,
                   help="retries of a request that failed or timed out (default 2)")
    p.add_argument("--encoding", type=_encoding, default="utf-8", help="of the --context file (default utf-8)")


def _check_worker_args(parser: _Parser, args: argparse.Namespace) -> None:
    if getattr(args, "worker_backend", "local") == "service":
        _check_service_args(parser, args)
        return
    remote = getattr(args, "worker_backend", "local") == "openai"
    if getattr(args, "worker", None) is None:
        args.worker = "text" if remote else "briefed"
    if args.worker != "briefed" and selector_from_args(args) is not None:
        parser.error(f"--tau / --keep-* choose the briefed worker's selection; --worker {args.worker} has none")
    if remote and args.worker == "briefed":
        parser.error("--worker briefed needs the model's weights on this machine (it briefs through the KV cache): "
                     "with --worker-backend openai use --worker text or --worker plain")
    if not remote:
        for option in ("worker_base_url", "worker_model", "worker_api_key"):
            if getattr(args, option, None) is not None:
                parser.error(f"--{option.replace('_', '-')} is for --worker-backend openai")
    local_policy = getattr(args, "policy", None) == "llm" and getattr(args, "backend", None) == "local"
    if remote and args.model is not None and not local_policy:
        parser.error("--model names a local model, and nothing runs on one here: the worker's model on the server "
                     "is --worker-model")
    from agents.backends.openai_compat import check_url

    env = os.environ.get("OPENAI_BASE_URL")
    urls = []   # (where it came from, the URL) for each server this command will talk to
    if getattr(args, "policy", None) == "llm" and getattr(args, "backend", None) == "openai":
        urls.append(("argument --base-url", args.base_url) if args.base_url else ("OPENAI_BASE_URL", env))
    if remote:
        urls.append(("argument --worker-base-url", args.worker_base_url) if args.worker_base_url else
                    ("argument --base-url", getattr(args, "base_url", None)) if getattr(args, "base_url", None) else
                    ("OPENAI_BASE_URL", env))
    for where, url in urls:
        if url:
            try:
                check_url(url.rstrip("/"), "")
            except ValueError as e:
                parser.error(f"{where}:{e}")


def _check_service_args(parser: _Parser, args: argparse.Namespace) -> None:
    """--worker-backend service: the briefed worker of an `rlm serve-worker` service, whose options are its own."""
    args.worker = args.worker or "briefed"
    if args.worker != "briefed":
        parser.error(f"--worker-backend service serves the briefed worker, not --worker {args.worker}")
    if selector_from_args(args) is not None:
        parser.error("--tau / --keep-* are the service's options: give them to `rlm serve-worker`")
    for option in ("worker_model", "worker_api_key"):
        if getattr(args, option, None) is not None:
            parser.error(f"--{option.replace('_', '-')} is for --worker-backend openai")
    local_policy = getattr(args, "policy", None) == "llm" and getattr(args, "backend", None) == "local"
    if args.model is not None and not local_policy:
        parser.error("--model names a local model, and nothing runs on one here: the worker's model is the "
                     "service's (rlm serve-worker --model)")
    if not args.worker_base_url:
        parser.error("--worker-backend service needs --worker-base-url: the URL `rlm serve-worker` printed (e.g. "
                     "http://127.0.0.1:8000/briefed)")
    from agents.backends.openai_compat import check_url

    try:
        check_url(args.worker_base_url.rstrip("/"), "")
    except ValueError as e:
        parser.error(f"argument --worker-base-url:{e}")


def read_context(path: str, encoding: str = "utf-8") -> str:
    """The text of a --context file ('-': stdin); ValueError, one line, for a file that is not usable text:
    missing, a folder, unreadable, empty, binary, or not in `encoding`."""
    name = "stdin" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"{path} is a folder, not a file: pass one text file")
        if not p.exists():
            raise ValueError(f"no such file: {path}")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if not data:
        raise ValueError(f"{name} is empty (0 bytes): pass a file with the text to read")
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    nul = -1 if wide else data.find(b"\0", 0, 1 << 16)
    if nul >= 0:
        raise ValueError(f"{name} looks binary (a NUL byte at offset {nul}), not text: pass a text file "
                         "(extract the text of a PDF or an archive first)")
    try:
        text = data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not valid {encoding}: byte 0x{data[e.start]:02x} at offset {e.start}; "
                         "if it is in another encoding, pass it (e.g. --encoding latin-1)") from None
    if not text.strip():
        raise ValueError(f"{name} holds only whitespace ({len(data)} bytes): pass a file with the text to read")
    return text


def _load_context(parser: _Parser, args: argparse.Namespace) -> None:
    """args.context_text: the --context file's text (None without one), or one line and exit 2."""
    args.context_text = None
    if args.context:
        try:
            args.context_text = read_context(args.context, args.encoding)
        except ValueError as e:
            parser.error(f"argument --context: {e}")


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"timeout_s": args.request_timeout, "max_retries": args.retries}


def _make_worker(args: argparse.Namespace) -> tuple[Worker, briefing.LoadedModel | None]:
    """The worker the options ask for, and the local model it loaded (None for a worker on a server)."""
    if getattr(args, "worker_backend", "local") == "service":
        from agents import RemoteBriefedWorker

        return RemoteBriefedWorker(url=args.worker_base_url, timeout_s=args.request_timeout,
                                   retries=args.retries), None
    if getattr(args, "worker_backend", "local") == "openai":
        from agents import OpenAIChatBackend, PlainWorker, TextWorker

        backend = OpenAIChatBackend(base_url=args.worker_base_url or getattr(args, "base_url", None),
                                    api_key=args.worker_api_key or getattr(args, "api_key", None),
                                    model=args.worker_model or getattr(args, "llm_model", None),
                                    **_server_options(args))
        kind = TextWorker if args.worker == "text" else PlainWorker
        return kind(backend=backend, max_new_tokens=args.max_new_tokens), None
    from agents import make_worker

    lm = load_model_from_args(args)
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
                   help="llm policy: OpenAI-compatible server (OPENAI_BASE_URL/OPENAI_API_KEY/OPENAI_MODEL) "
                        "or local model")
    p.add_argument("--base-url", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--llm-model", default=None, help="llm policy: model name on the server")
    p.add_argument("--max-iterations", type=_at_least(1), default=None,
                   help="orchestrator steps (default: 20 for --policy llm; chunk-scan: what the whole scan needs)")
    p.add_argument("--max-worker-calls", type=_at_least(0), default=None,
                   help="worker calls (default: 64 for --policy llm; chunk-scan: what the whole scan needs)")
    p.add_argument("--max-tokens", type=_at_least(1), default=None)
    p.add_argument("--max-concurrent-subcalls", type=_at_least(1), default=4,
                   help="worker calls of one worker_batch(...) in flight at once (default 4)")
    p.add_argument("--max-wall-s", type=_positive, default=None,
                   help="seconds for the whole run; a server request still in flight then is cut off")
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
    _add_model_args(d)
    d.add_argument("--log-dir", default=None, help="write demo-briefed.jsonl / demo-text.jsonl here")
    d.add_argument("--workers", default="briefed,text", help="comma list of briefed,text,plain")
    d.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")

    r = sub.add_parser("repl", help="interactive sandbox console with a worker() primitive",
                       description="A sandboxed Python console. worker(query) reads the session so far, as the "
                                   "worker of `rlm run` reads a run: your cells and their outputs (%trajectory "
                                   "shows that text). The --context file is `context`.")
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
    v.add_argument("--trajectory", action="store_true",
                   help="print the root run's trajectory text as the worker reads it")
    doc = sub.add_parser("doctor", help="which sandbox isolation layers are active on this machine, and why any is not")
    doc.add_argument("--json", action="store_true", help="the report as JSON")
    sw = sub.add_parser("serve-worker", help="a briefed-worker service on Ray Serve (needs the [serve] extra)",
                        description="Serve the briefed worker: replicas that hold the trajectories' KV caches, for "
                                    "orchestrators on other machines (rlm run --worker-backend service, or "
                                    "agents.RemoteBriefedWorker). Runs until Ctrl-C. See docs/service.md.")
    _add_model_args(sw)
    _add_selector_args(sw)
    sw.add_argument("--max-new-tokens", type=_at_least(1), default=64, help="worker answer length")
    sw.add_argument("--reserve", type=_at_least(1), default=512,
                    help="positions each cache leaves for the call prompt and generation (default 512)")
    sw.add_argument("--cache-budget", type=_at_least(1), default=None,
                    help="positions each trajectory's cache keeps before it folds (default: the model's window "
                         "minus --reserve)")
    sw.add_argument("--replicas", type=_at_least(1), default=1, help="replicas, each with its own model (default 1)")
    sw.add_argument("--address", default=None,
                    help="join this Ray cluster (auto, or HOST:PORT of its head) instead of starting Ray here")
    sw.add_argument("--cache-bytes", type=_size, default="2G",
                    help="bytes each replica's caches (KV and archive) may hold together, e.g. 512M, 2G (default 2G)")
    sw.add_argument("--max-trajectories", type=_at_least(1), default=256, help="caches a replica holds at most")
    sw.add_argument("--max-request-bytes", type=_size, default="16M",
                    help="the largest request a replica reads; larger ones get a 413 (default 16M)")
    sw.add_argument("--host", default="127.0.0.1",
                    help="where the HTTP proxy listens (0.0.0.0 for other machines; default 127.0.0.1)")
    sw.add_argument("--port", type=_at_least(1), default=8000, help="the HTTP proxy's port (default 8000)")
    sw.add_argument("--no-http", action="store_true",
                    help="no HTTP proxy: deployment handles only (drivers inside the Ray cluster)")
    sw.add_argument("--proxy-timeout", type=_positive, default=120.0,
                    help="seconds to wait for the HTTP proxy to answer (default 120)")
    sw.add_argument("--app", default="briefed-worker", help="the Serve application's name (default briefed-worker)")
    sw.add_argument("--cpus-per-replica", type=_positive, default=1.0, help="Ray CPUs per replica (default 1)")
    sw.add_argument("--gpus-per-replica", type=_number, default=None,
                    help="Ray GPUs per replica (default: 1 with --device cuda..., else 0)")
    sw.add_argument("--threads", type=_at_least(1), default=None,
                    help="torch CPU threads per replica (default: --cpus-per-replica, at least 1)")
    parser.commands = {"run": p, "demo": d, "repl": r, "bench": b, "view": v, "doctor": doc, "serve-worker": sw}
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from agents import ChunkScanPolicy, LLMPolicy, LocalChatBackend, OpenAIChatBackend
    from repl import SandboxConfig
    from rlm import RLM, Budgets, RunInterrupted
    from rlm.progress import Progress

    context = args.context_text
    worker, lm = _make_worker(args)
    if args.policy == "chunk-scan":
        policy = ChunkScanPolicy(chunk_chars=args.chunk_chars)
    elif args.backend == "local":
        if lm is None:
            lm = load_model_from_args(args)
        policy = LLMPolicy(LocalChatBackend(lm, max_new_tokens=512))
    else:
        policy = LLMPolicy(OpenAIChatBackend(base_url=args.base_url, api_key=args.api_key, model=args.llm_model,
                                             **_server_options(args)))
    steps, calls = policy.budgets_for(context) if isinstance(policy, ChunkScanPolicy) else (20, 64)
    budgets = Budgets(max_iterations=args.max_iterations or steps,
                      max_worker_calls=calls if args.max_worker_calls is None else args.max_worker_calls,
                      max_tokens=args.max_tokens, max_wall_s=args.max_wall_s,
                      max_concurrent_subcalls=args.max_concurrent_subcalls)
    rlm = RLM(policy, worker, sandbox_config=SandboxConfig(timeout_s=args.cell_timeout), budgets=budgets,
              log_path=args.log, on_event=None if args.quiet else Progress(sys.stderr))
    try:
        res = rlm.run(args.query, context)
    except RunInterrupted as stop:
        res = stop.result
    if args.json:
        print(res.model_dump_json(indent=2))
    else:
        print(f"\nAnswer: {res.answer}")
        print(f"Stop reason: {res.stop_reason}{' (partial answer)' if res.partial else ''}; {res.iterations} "
              f"iterations, {res.worker_calls} worker calls, {res.wall_s:.1f}s")
        ratio = res.median_kept_ratio()
        if ratio is not None:
            print(f"Median kept ratio: {ratio:.1%}")
        print()
        print(res.usage_table())
        print("\n".join(res.graph_summary.lines()))
        if args.log:
            print(f"Log: {args.log}")
    sys.stdout.flush()
    if res.stop_reason == "final":
        return 0
    print(failure_line("rlm run", res.error, res.hint), file=sys.stderr)
    return 130 if res.stop_reason == "interrupted" else 1


def failure_line(prog: str, error: str | None, hint: str | None) -> str:
    """`prog: error; hint` on one line."""
    from rlm.failures import one_line

    return one_line(f"{prog}: {error or 'failed'}" + (f"; {hint}" if hint else ""), 1000)


def cmd_demo(args: argparse.Namespace) -> int:
    from rlm import demo

    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    demo.main(essay=args.essay or demo.DEFAULT_ESSAY, query=args.query or demo.DEFAULT_QUERY, max_chars=args.max_chars,
              chunk_chars=args.chunk_chars, selector=selector_from_args(args), max_new_tokens=args.max_new_tokens,
              model=args.model, log_dir=args.log_dir, workers=workers, device=args.device, dtype=args.dtype)
    return 0


def console_primitives(worker: Any, context: str | None = None) -> dict[str, Any]:
    """`worker` / `worker_batch` for the interactive console, on a trajectory that holds only the worker calls
    (`rlm repl` uses `rlm.interactive.ConsoleTrajectory`, which records the cells too)."""
    from rlm.interactive import ConsoleTrajectory

    return ConsoleTrajectory(worker, context).primitives()


def cmd_repl(args: argparse.Namespace) -> int:
    from repl import console
    from rlm.interactive import ConsoleTrajectory

    worker, _ = _make_worker(args)
    session = ConsoleTrajectory(worker, args.context_text)
    rest = [a for a in getattr(args, "console_args", []) if a != "--"]
    return int(console.main(rest, primitives=session.primitives(), hooks=session.hooks()) or 0)


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


def service_config_from_args(args: argparse.Namespace) -> Any:
    """The `agents.service.ServiceConfig` of `rlm serve-worker`'s options."""
    from agents.service import ServiceConfig

    worker: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "reserve": args.reserve,
                              "cache_budget": args.cache_budget}
    selector = selector_from_args(args)
    if selector is not None:
        worker["selector"] = selector
    threads = args.threads or max(1, int(args.cpus_per_replica))
    return ServiceConfig(model=args.model, device=args.device, dtype=args.dtype, cache_bytes=args.cache_bytes,
                         max_trajectories=args.max_trajectories, max_request_bytes=args.max_request_bytes,
                         threads=threads, worker=worker)


def cmd_serve_worker(args: argparse.Namespace) -> int:
    """Start the service, say where it listens and how to connect, and serve until Ctrl-C (then stop it)."""
    import time

    try:
        from agents.service import app as service
    except ImportError as e:
        print(f"rlm serve-worker: {e}", file=sys.stderr)
        return 2
    try:
        config = service_config_from_args(args)
    except ValueError as e:
        print(f"rlm serve-worker: {e}", file=sys.stderr)
        return 2
    if args.model is not None and not args.address:   # the replicas would fail to start: say it now, in one line
        from briefing.model import KNOWN

        folder = Path(args.model).expanduser()
        if args.model not in KNOWN and not (folder / "config.json").is_file():
            print(f"rlm serve-worker: argument --model: {args.model!r} is not a known model ({', '.join(KNOWN)}) "
                  "and not a Hugging Face model folder (with config.json)", file=sys.stderr)
            return 2
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if str(args.device).startswith("cuda") else 0.0
    started = service.start(config, replicas=args.replicas, address=args.address, app=args.app,
                            http=not args.no_http, host=args.host, port=args.port,
                            cpus_per_replica=args.cpus_per_replica, gpus_per_replica=gpus,
                            proxy_timeout_s=args.proxy_timeout, log=lambda line: print(f"  {line}", flush=True))
    try:
        about = service.serve.get_app_handle(started.app).describe.remote().result(timeout_s=60)
        print(f"rlm serve-worker: {about.get('model')} on {started.replicas} replica(s) ({about.get('device')}, "
              f"{about.get('dtype')}), {config.cache_bytes:,} cache bytes per replica; started in "
              f"{started.total_s:.1f}s")
        if started.url:
            print(f"  HTTP: {started.url}  (from any machine that reaches it: agents.RemoteBriefedWorker(url="
                  f"'{started.url}'), or rlm run --worker-backend service --worker-base-url {started.url})")
        print(f"  handles: Serve application {started.app!r} on the Ray cluster at {started.ray_address} (a "
              f"driver there: agents.RemoteBriefedWorker(app='{started.app}', address='{started.ray_address}'))")
        print("  Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    finally:
        service.stop(started)


BENCH_MISSING = ("rlm bench: the benchmarks are not installed: install the project with its bench extra "
                 "(`pip install -e '.[bench]'`, what `make setup` does)")


def load_bench() -> Callable[[list[str]], int] | None:
    """The `bench` command the installed benchmarks register (entry point group `rlm.commands`), or None after one
    line on stderr. Nothing is imported from the current folder: `rlm bench` runs the installed benchmarks."""
    from importlib.metadata import entry_points

    found = entry_points(group="rlm.commands", name="bench")
    if not found:
        print(BENCH_MISSING, file=sys.stderr)
        return None
    try:
        return next(iter(found)).load()
    except ModuleNotFoundError as e:
        print(f"rlm bench: missing module {e.name!r}: install the bench extra (`pip install -e '.[bench]'`)",
              file=sys.stderr)
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
    handlers = {"run": cmd_run, "demo": cmd_demo, "repl": cmd_repl, "view": cmd_view, "doctor": cmd_doctor,
                "serve-worker": cmd_serve_worker}
    if args.command not in handlers:
        parser.print_help()
        return 2
    if args.command in ("run", "repl"):
        command = parser.commands[args.command]
        _check_worker_args(command, args)
        _load_context(command, args)
    _set_threads(args)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print(f"\nrlm {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as e:   # one line, not a traceback (RLM_DEBUG=1 shows it)
        if os.environ.get("RLM_DEBUG"):
            raise
        print(failure_line(f"rlm {args.command}", f"{type(e).__name__}: {e}",
                           "RLM_DEBUG=1 shows the traceback"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
