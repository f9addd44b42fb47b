"""An LLM orchestrator on any OpenAI-compatible server, with a local briefed worker.

    export OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=... OPENAI_MODEL=...
    .venv/bin/python examples/openai_orchestrator.py --context FILE --query "..." [--worker briefed|text|plain|api]

The orchestrator model gets the RLM-style system prompt (`agents.RLM_SYSTEM_PROMPT`): the context
lives in the REPL, it writes ```repl code calling `worker(...)`, and ends with FINAL(...).
`--worker api` uses the same server as a text worker (trajectory pasted in the system message).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from agents import LLMPolicy, OpenAIChatBackend, TextWorker, make_worker
from rlm import RLM, Budgets


def build(args: argparse.Namespace) -> RLM:
    backend = OpenAIChatBackend(base_url=args.base_url, api_key=args.api_key, model=args.model,
                                timeout_s=args.timeout, max_retries=args.retries)
    if args.worker == "api":
        worker = TextWorker(backend=backend, max_new_tokens=256)
    else:
        import briefing

        worker = make_worker(args.worker, lm=briefing.load_model(), max_new_tokens=64)
    return RLM(LLMPolicy(backend), worker, budgets=Budgets(max_iterations=args.max_iterations), log_path=args.log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", required=True, help="text file")
    ap.add_argument("--query", required=True)
    ap.add_argument("--worker", default="briefed", choices=["briefed", "text", "plain", "api"])
    ap.add_argument("--base-url", default=None, help="default: $OPENAI_BASE_URL")
    ap.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    ap.add_argument("--model", default=None, help="default: $OPENAI_MODEL")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--retries", type=int, default=4)
    ap.add_argument("--max-iterations", type=int, default=12)
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)

    result = build(args).run(args.query, Path(args.context).read_text(encoding="utf-8"))
    print("Answer:", result.answer)
    print("Stop reason:", result.stop_reason)
    print(result.usage_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
