"""Why a run ended without a final answer, in one line: what failed, the cause, and what to do.

`explain(reason, cause, role, budgets)` gives `(error, hint)`; the runtime puts both on the run's `final`
event and on `RunResult`, and `rlm run` prints ``rlm run: <error>; <hint>`` on stderr. The hints name the
`rlm run` options (the library's names are in `Budgets` and the backends' docstrings).
"""
from __future__ import annotations

from typing import Any

OPTIONS = {   # role -> (its server URL, its model, its key)
    "orchestrator": ("--base-url or OPENAI_BASE_URL", "--llm-model or OPENAI_MODEL", "--api-key or OPENAI_API_KEY"),
    "worker": ("--worker-base-url", "--worker-model", "--worker-api-key"),
}
BUDGET_OPTIONS = {"max_iterations": ("--max-iterations", "steps"), "max_worker_calls": ("--max-worker-calls", "calls"),
                  "max_tokens": ("--max-tokens", "tokens"), "max_wall_s": ("--max-wall-s", "s")}


def one_line(text: object, limit: int = 500) -> str:
    """`text` on one line (whitespace runs collapsed), at most `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def explain(reason: str, cause: BaseException | None = None, role: str = "orchestrator",
            budgets: Any = None, note: str | None = None) -> tuple[str | None, str | None]:
    """(error, hint) for a run that stopped for `reason`; (None, None) for a final answer.

    cause: the exception behind it, if any. role: "orchestrator" or "worker" (whose call raised `cause`).
    budgets: the run's `Budgets` (to name the limit). note: the policy's last words (policy_stopped).
    """
    if reason == "final":
        return None, None
    if reason == "interrupted":
        return "interrupted (Ctrl-C) before a final answer", "the answer so far is printed; the log holds every event"
    if reason == "max_wall_s" and cause is not None:
        limit = getattr(budgets, "max_wall_s", None)
        what = _server(cause, role)
        return (one_line(f"{what} did not answer before the wall-time budget ({limit:g}s) ran out: {cause}"),
                "the request was cut off and the answer so far is printed; check that the server is up and not "
                "overloaded, or raise --max-wall-s")
    if reason in BUDGET_OPTIONS:
        option, unit = BUDGET_OPTIONS[reason]
        limit = getattr(budgets, reason, None)
        amount = f" ({limit:g} {unit})" if isinstance(limit, (int, float)) else ""
        return (f"the {reason} budget{amount} ran out before a final answer",
                f"the answer so far is printed; raise {option} for a full run")
    if reason == "policy_stopped":
        why = f": {one_line(note, 200)}" if note else ""
        if cause is not None:
            why += f" (last error: {one_line(cause, 300)})"
        return (f"the orchestrator policy gave up before a final answer{why}",
                "see the worker calls in the log (rlm view LOG); a smaller --chunk-chars or another --worker may help")
    if reason == "sandbox_error":
        return (one_line(f"the REPL sandbox failed: {cause or 'see the log'}"),
                "check that the sandbox starts here: python -m repl -c 'print(1)'")
    if cause is None:
        return f"the run ended ({reason}) before a final answer", "see the log (--log FILE, then rlm view FILE)"
    return describe(cause, role)


def describe(cause: BaseException, role: str = "orchestrator") -> tuple[str, str]:
    """(error, hint) for an exception a policy (role "orchestrator") or a worker raised."""
    from agents.backends.base import BackendError

    url_opt, model_opt, key_opt = OPTIONS.get(role, OPTIONS["orchestrator"])
    if not isinstance(cause, BackendError):
        return (one_line(f"the {role} failed: {type(cause).__name__}: {cause}"),
                "run again with --log FILE and read it with rlm view FILE")
    what, kind, status = _server(cause, role), cause.kind, cause.status
    if kind == "unreachable":
        return one_line(f"{what} could not be reached: {cause}"), f"start the server, or fix its URL ({url_opt})"
    if kind in ("timeout", "deadline"):
        return (one_line(f"{what} did not answer: {cause}"),
                "check that the server is up and not overloaded, or raise --request-timeout / --retries")
    if kind == "malformed":
        return (one_line(f"{what} answered, but not with a chat completion: {cause}"),
                f"point {url_opt} at an OpenAI-compatible API root (requests go to <url>/chat/completions)")
    if kind == "protocol":
        return (one_line(f"{what} does not speak HTTP: {cause}"),
                f"check the host and port in {url_opt}")
    if status in (401, 403):
        return one_line(f"{what} refused the request: {cause}"), f"check the API key ({key_opt})"
    if status == 404:
        return (one_line(f"{what} has no chat-completions endpoint there: {cause}"),
                f"fix the URL ({url_opt}): give the API root, often ending in /v1")
    if status is not None and status < 500 and status != 429:
        return (one_line(f"{what} rejected the request: {cause}"),
                f"check the model name ({model_opt}) and the server's log")
    return (one_line(f"{what} failed: {cause}"),
            "the server is failing or overloaded: try again later, or raise --retries")


def _server(cause: BaseException, role: str) -> str:
    """Whose server (the backend's message names its URL)."""
    return "the orchestrator's server" if role == "orchestrator" else f"the {role}'s server"
