"""`rlm run` / `rlm repl` when things go wrong (issue 26, "CLI: failures that say why").

Real servers on loopback (tests/chat_server.py, in a thread, or in a subprocess that kills itself mid-request),
a port nothing listens on, bad URLs, bad context files, and a real terminal for Ctrl-C. Every failure exits
non-zero with one line on stderr, and the log's `final` event carries the same error and hint.
"""
from __future__ import annotations

import json
import os
import signal
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm.cli import main
from rlm.trajectory import read_log
from tests.chat_server import ChatServer, free_port

ROOT = Path(__file__).resolve().parents[1]
DOC = "The meeting was moved to Paris. Bring the red folder. The tide was low in the morning."
ASK = "Looking.\n```repl\nnote = worker('Where was the meeting moved?')\nprint(note)\n```"


@pytest.fixture
def doc(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text(DOC)
    return str(p)


@pytest.fixture
def worker_server():
    s = ChatServer(["Paris"]).start()
    yield s
    s.close()


def cli(capsys, argv):
    """(exit status, stdout, stderr) of `rlm` in this process."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def final_event(log):
    return [e for e in read_log(log) if e.type == "final"][-1]


def one_line_failure(err, log=None):
    """The stderr is one line; with a log, it is the final event's error and hint."""
    assert err.count("\n") == 1 and err.startswith("rlm "), err
    if log is not None:
        f = final_event(log)
        assert f.error and f.hint and err.strip() == f"rlm run: {f.error}; {f.hint}"
        return f
    return None


def llm_run(doc, base_url, worker_url, log, *extra):
    return ["run", "--context", doc, "--query", "Where?", "--policy", "llm", "--base-url", base_url,
            "--worker-backend", "openai", "--worker-base-url", worker_url, "--log", str(log), "--quiet", *extra]


@pytest.fixture
def subprocess_server():
    """Start `python -m tests.chat_server ARGS` (a process the test can see die); yields a starter."""
    procs = []

    def start(*args):
        proc = subprocess.Popen([sys.executable, "-m", "tests.chat_server", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        port = int(proc.stdout.readline())
        return proc, f"http://127.0.0.1:{port}/v1"

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# -- 1. failures exit non-zero with one line ------------------------------------------------------
def test_wrong_port_for_the_orchestrator(capsys, doc, tmp_path, worker_server):
    log = tmp_path / "run.jsonl"
    rc, out, err = cli(capsys, llm_run(doc, f"http://127.0.0.1:{free_port()}/v1", worker_server.url, log,
                                       "--retries", "1"))
    assert rc == 1
    f = one_line_failure(err, log)
    assert f.stop_reason == "policy_error"
    assert "the orchestrator's server could not be reached" in err and "Connection refused (2 attempts)" in err
    assert "fix its URL (--base-url or OPENAI_BASE_URL)" in err
    assert "Stop reason: policy_error" in out


def test_wrong_port_for_the_worker(capsys, doc, tmp_path):
    log = tmp_path / "run.jsonl"
    url = f"http://127.0.0.1:{free_port()}/v1"
    rc, out, err = cli(capsys, ["run", "--context", doc, "--query", "Where?", "--worker-backend", "openai",
                                "--worker-base-url", url, "--retries", "0", "--log", str(log), "--quiet"])
    assert rc == 1
    f = one_line_failure(err, log)
    assert f.stop_reason == "worker_error" and "the worker's server could not be reached" in err
    assert "--worker-base-url" in err
    # the run stopped at the first failed call instead of retrying every chunk
    assert sum(1 for e in read_log(log) if e.type == "worker_call") == 1


def test_server_killed_mid_run(capsys, doc, tmp_path, worker_server, subprocess_server):
    proc, url = subprocess_server("--reply", ASK, "--reply", "FINAL_VAR(note)", "--kill-at", "2")
    log = tmp_path / "run.jsonl"
    rc, out, err = cli(capsys, llm_run(doc, url, worker_server.url, log, "--retries", "1"))
    assert proc.wait(timeout=10) == -9          # it really died, mid-request
    assert rc == 1
    f = one_line_failure(err, log)
    assert f.stop_reason == "policy_error" and "the orchestrator's server could not be reached" in err
    assert "Answer: Paris" in out and f.answer == "Paris"      # the partial answer survives


def test_hung_orchestrator_is_cut_off_by_max_wall_s(capsys, doc, tmp_path, worker_server):
    server = ChatServer([ASK], hang_at=2).start()
    log = tmp_path / "run.jsonl"
    try:
        t0 = time.monotonic()
        rc, out, err = cli(capsys, llm_run(doc, server.url, worker_server.url, log, "--max-wall-s", "3",
                                           "--request-timeout", "60", "--retries", "4"))
        took = time.monotonic() - t0
    finally:
        server.close()
    print(f"hung orchestrator, --max-wall-s 3: the run took {took:.2f}s")
    assert took < 3 + 10, took                    # not 60 s x 5 attempts
    assert rc == 1 and server.count == 2
    f = one_line_failure(err, log)
    assert f.stop_reason == "max_wall_s" and f.answer == "Paris" and "Answer: Paris" in out
    assert "did not answer before the wall-time budget (3s) ran out" in err and "raise --max-wall-s" in err


def test_hung_worker_is_cut_off_by_max_wall_s(capsys, tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(DOC * 4)
    server = ChatServer(["the first note"], hang_at=2).start()
    log = tmp_path / "run.jsonl"
    try:
        t0 = time.monotonic()
        rc, out, err = cli(capsys, ["run", "--context", str(ctx), "--query", "Where?", "--chunk-chars", "80",
                                    "--worker-backend", "openai", "--worker-base-url", server.url,
                                    "--max-wall-s", "3", "--log", str(log), "--quiet"])
        took = time.monotonic() - t0
    finally:
        server.close()
    print(f"hung worker, --max-wall-s 3: the run took {took:.2f}s")
    assert took < 3 + 10, took
    assert rc == 1
    f = one_line_failure(err, log)
    assert f.stop_reason == "max_wall_s" and "the worker's server did not answer before the wall-time budget" in err
    assert f.answer == "the first note"


def test_request_timeout_and_retries(capsys, doc, tmp_path):
    server = ChatServer(["never sent"], hang_at=1).start()
    log = tmp_path / "run.jsonl"
    try:
        t0 = time.monotonic()
        rc, out, err = cli(capsys, ["run", "--context", doc, "--query", "Where?", "--worker-backend", "openai",
                                    "--worker-base-url", server.url, "--request-timeout", "0.5", "--retries", "1",
                                    "--log", str(log), "--quiet"])
        took = time.monotonic() - t0
    finally:
        server.close()
    assert rc == 1 and server.count == 2          # one try and one retry
    assert took < 0.5 * 2 + 1 + 10, took          # two timeouts and a 1 s backoff
    f = one_line_failure(err, log)
    assert f.stop_reason == "worker_error"
    assert "no answer from" in err and "within 0.5s (2 attempts)" in err and "raise --request-timeout" in err


@pytest.mark.parametrize(("mode", "message"), [
    ("--garbage-at", "the orchestrator's server does not speak HTTP"),
    ("--notjson-at", "the orchestrator's server answered, but not with a chat completion"),
])
def test_server_answering_garbage(capsys, doc, tmp_path, worker_server, subprocess_server, mode, message):
    proc, url = subprocess_server(mode, "1")
    log = tmp_path / "run.jsonl"
    rc, out, err = cli(capsys, llm_run(doc, url, worker_server.url, log))
    assert rc == 1
    f = one_line_failure(err, log)
    assert f.stop_reason == "policy_error" and message in err


def test_bad_urls(capsys, doc, tmp_path, worker_server):
    for url in ("foo", "localhost:8080/v1", "http://127.0.0.1:99999/v1"):
        rc, out, err = cli(capsys, llm_run(doc, url, worker_server.url, tmp_path / "x.jsonl"))
        assert rc == 2 and err.count("\n") == 1 and "argument --base-url:" in err and "http://127.0.0.1:8080/v1" in err
    rc, out, err = cli(capsys, ["run", "--context", doc, "--query", "q", "--worker-backend", "openai",
                                "--worker-base-url", "ftp://example.com/v1"])
    assert rc == 2 and "argument --worker-base-url:" in err
    # a path with no chat-completions endpoint: 404, not retried
    log = tmp_path / "run.jsonl"
    rc, out, err = cli(capsys, llm_run(doc, worker_server.url.replace("/v1", "/api"), worker_server.url, log))
    assert rc == 1
    one_line_failure(err, log)
    assert "has no chat-completions endpoint there: HTTP 404" in err and "often ending in /v1" in err


def test_a_budget_without_a_final_answer_exits_1(capsys, doc, tmp_path):
    server = ChatServer(["Still looking.\n```repl\nprint(1)\n```"]).start()
    log = tmp_path / "run.jsonl"
    try:
        rc, out, err = cli(capsys, llm_run(doc, server.url, server.url, log, "--max-iterations", "2"))
    finally:
        server.close()
    assert rc == 1
    f = one_line_failure(err, log)
    assert f.stop_reason == "max_iterations"
    assert "the max_iterations budget (2 steps) ran out before a final answer" in err and "--max-iterations" in err


# -- 3. the worker on a server -----------------------------------------------------------------------
def test_text_and_plain_workers_on_a_server_without_torch(tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(DOC)
    for kind in ("text", "plain"):
        server = ChatServer(["Paris"]).start()
        code = ("import sys; from rlm.cli import main; rc = main(sys.argv[1:]); "
                "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
        try:
            proc = subprocess.run([sys.executable, "-c", code, "run", "--context", str(ctx), "--query", "Where?",
                                   "--worker", kind, "--worker-backend", "openai", "--worker-base-url", server.url,
                                   "--worker-model", "served-model", "--max-new-tokens", "7", "--quiet"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)
        finally:
            server.close()
        assert proc.returncode == 0, proc.stderr
        assert "Answer: Paris" in proc.stdout and "torch imported: False" in proc.stdout
        body = server.bodies[0]
        assert body["model"] == "served-model" and body["max_tokens"] == 7
        system = body["messages"][0]["content"]
        assert ("The meeting was moved to Paris" in system) == (kind == "text")   # the trajectory, pasted


def test_briefed_worker_on_a_server_is_refused(capsys, doc):
    rc, out, err = cli(capsys, ["run", "--context", doc, "--query", "q", "--worker", "briefed",
                                "--worker-backend", "openai", "--worker-base-url", "http://127.0.0.1:1/v1"])
    assert rc == 2 and err.count("\n") == 1
    assert "--worker briefed needs the model's weights on this machine" in err and "--worker text" in err
    rc, out, err = cli(capsys, ["run", "--context", doc, "--query", "q", "--worker-model", "m"])
    assert rc == 2 and "--worker-model is for --worker-backend openai" in err


# -- 5. context input ------------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty (0 bytes)"),
    (b"  \n\t\n", "holds only whitespace"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary (a NUL byte at offset 8)"),
    ("café au lait".encode("latin-1"), "is not valid utf-8: byte 0xe9 at offset 3; if it is in another encoding, "
                                       "pass it (e.g. --encoding latin-1)"),
])
def test_bad_context_files_are_refused(capsys, tmp_path, content, message):
    f = tmp_path / "ctx.bin"
    f.write_bytes(content)
    for command in (["run", "--query", "q"], ["repl"]):
        rc, out, err = cli(capsys, [*command, "--context", str(f)])
        assert rc == 2 and err.count("\n") == 1 and f"argument --context: {f} {message}" in err, err


def test_a_folder_is_named_as_a_folder(capsys, tmp_path):
    rc, out, err = cli(capsys, ["run", "--query", "q", "--context", str(tmp_path)])
    assert rc == 2 and f"argument --context: {tmp_path} is a folder, not a file" in err


def test_encoding_option_reads_latin1(capsys, tmp_path):
    f = tmp_path / "ctx.txt"
    f.write_bytes("café au lait".encode("latin-1"))
    rc, out, err = cli(capsys, ["repl", "--worker-backend", "openai", "--worker-base-url", "http://127.0.0.1:1/v1",
                                "--context", str(f), "--encoding", "latin-1", "-q", "--no-history",
                                "-c", "print(context.upper())"])
    assert rc == 0 and out == "CAFÉ AU LAIT\n"
    rc, out, err = cli(capsys, ["repl", "--context", str(f), "--encoding", "no-such-codec"])
    assert rc == 2 and "argument --encoding: unknown encoding 'no-such-codec'" in err


# -- 4. rlm repl briefs the worker on the session ------------------------------------------------------
def test_repl_worker_reads_the_cells_and_outputs(capsys, monkeypatch, tmp_path):
    from agents.events import CellOutput, CodeCell, RunStart, WorkerCall
    from agents.workers.prompt import TRAJECTORY_HEADER
    from rlm.interactive import SESSION_QUERY

    ctx = tmp_path / "ctx.txt"
    ctx.write_text("alpha beta gamma")
    server = ChatServer(["It printed GAMMA."]).start()
    lines = iter(["x = context.split()[-1]", "print(x.upper())", "worker('What was printed?')", "%trajectory",
                  "%help"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    try:
        rc, out, err = cli(capsys, ["repl", "--worker", "text", "--worker-backend", "openai",
                                    "--worker-base-url", server.url, "--context", str(ctx), "-q", "--no-history"])
    finally:
        server.close()
    assert rc == 0, err
    # what the worker read: the same events `rlm run` records, rendered by the same code
    events = [RunStart(query=SESSION_QUERY, context_length=16, context_lengths=[16]),
              CodeCell(code="x = context.split()[-1]"), CellOutput(),
              CodeCell(code="print(x.upper())"), CellOutput(stdout="GAMMA\n"),
              CodeCell(code="worker('What was printed?')")]
    expected = "".join(e.render() for e in events)
    assert server.bodies[0]["messages"][0]["content"] == TRAJECTORY_HEADER + expected
    assert server.bodies[0]["messages"][1]["content"] == "What was printed?"
    # %trajectory shows it, with the worker call and the cell's value
    call = WorkerCall(index=1, query="What was printed?", answer="It printed GAMMA.")
    shown = expected + call.render() + CellOutput(value="'It printed GAMMA.'").render()
    assert shown in out
    assert "%trajectory the trajectory the worker reads" in out


def test_repl_records_an_interrupted_cell():
    from repl import Sandbox
    from repl.console import Console
    from rlm.interactive import ConsoleTrajectory
    from tests.fakes import FakeWorker

    worker = FakeWorker()
    session = ConsoleTrajectory(worker, "ctx")
    with Sandbox(primitives=session.primitives()) as sb:
        console = Console(sb, out=open(os.devnull, "w"), hooks=session.hooks())
        console.run_source("y = 6 * 7\ny")
        session.after_cell("while True: pass", None)   # what the console reports after Ctrl-C
        console.run_source("worker('and y?')")
    seen = worker.calls[0][1]
    assert "y = 6 * 7" in seen and "Out: 42" in seen and "KeyboardInterrupt: the cell was stopped" in seen


# -- 6. Ctrl-C in a real terminal --------------------------------------------------------------------
class Term:
    def __init__(self, argv, env):
        import fcntl
        import pty
        import termios

        self.master, slave = pty.openpty()

        def controlling_tty():   # a session of its own with the pty as its terminal: ^C -> SIGINT
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)   # a background job's shell ignores ^C: a terminal does not

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                     close_fds=True, preexec_fn=controlling_tty)
        os.close(slave)
        self.buf = ""

    def read_until_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self.buf += data.decode(errors="replace")
            elif self.proc.poll() is not None:
                break
        return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\r", "", self.buf)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_ctrl_c_writes_the_stop_record_and_prints_the_answer_so_far(tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(DOC * 4)
    log = tmp_path / "run.jsonl"
    server = ChatServer(["the first note"], hang_at=2).start()
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "dumb", "PYTHONPATH": str(ROOT)}
    term = Term([sys.executable, "-m", "rlm.cli", "run", "--context", str(ctx), "--query", "Where?",
                 "--chunk-chars", "80", "--worker-backend", "openai", "--worker-base-url", server.url,
                 "--log", str(log), "--quiet"], env)
    try:
        deadline = time.monotonic() + 60
        while server.count < 2 and time.monotonic() < deadline:   # the second worker call is hanging
            time.sleep(0.05)
        assert server.count == 2
        os.write(term.master, b"\x03")
        text = term.read_until_exit(30)
        assert term.proc.wait(timeout=10) == 130, text
    finally:
        term.close()
        server.close()
    assert "Answer: the first note" in text and "Stop reason: interrupted (partial answer)" in text
    assert "rlm run: interrupted (Ctrl-C) before a final answer; the answer so far is printed" in text
    f = final_event(log)
    assert f.stop_reason == "interrupted" and f.answer == "the first note" and f.error.startswith("interrupted")


def test_library_run_interrupted_keeps_its_result(tmp_path):
    from agents import ChunkScanPolicy
    from rlm import RLM, RunInterrupted
    from tests.fakes import FakeWorker

    def answer(q, t):
        if "Chunk 2" in q:
            raise KeyboardInterrupt
        return "note one"

    log = tmp_path / "run.jsonl"
    with pytest.raises(RunInterrupted) as info:
        RLM(ChunkScanPolicy(chunk_chars=40), FakeWorker(answer), log_path=str(log)).run("q", DOC)
    res = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert res.stop_reason == "interrupted" and res.answer == "note one" and res.partial
    assert final_event(log).stop_reason == "interrupted"


# -- 8. chunk-scan summarises its chunks -----------------------------------------------------------------
def test_chunk_scan_prints_a_summary_not_every_length():
    from agents import ChunkScanPolicy
    from rlm import RLM, Budgets
    from tests.fakes import FakeWorker, fake_factory

    res = RLM(ChunkScanPolicy(chunk_chars=10), FakeWorker(), sandbox_factory=fake_factory,
              budgets=Budgets(max_iterations=1)).run("q", "x" * 50_005)
    setup = next(e for e in res.events if e.type == "output")
    assert setup.stdout == "5001 chunks of 5 to 10 characters, 50,005 characters in all\n"


def test_chunk_scan_budgets_fit_the_whole_scan(capsys, tmp_path, worker_server):
    """The default budgets of `rlm run --policy chunk-scan` are what the scan needs (20 steps stopped a 50 KB
    scan at chunk 19 of 34); an explicit --max-iterations still wins."""
    ctx = tmp_path / "doc.txt"
    ctx.write_text(DOC * 7)                        # 616 characters: 31 chunks of 20
    argv = ["run", "--context", str(ctx), "--query", "Where?", "--chunk-chars", "20", "--worker-backend", "openai",
            "--worker-base-url", worker_server.url, "--json", "--quiet"]
    rc, out, err = cli(capsys, argv)
    data = json.loads(out)
    assert rc == 0 and data["stop_reason"] == "final" and data["worker_calls"] == 31 + 2 and data["answer"] == "Paris"
    rc, out, err = cli(capsys, [*argv, "--max-iterations", "5"])
    assert rc == 1 and json.loads(out)["stop_reason"] == "max_iterations" and "(5 steps)" in err


# -- the log keeps the stop record as JSON -------------------------------------------------------------
def test_json_output_carries_error_and_hint(capsys, doc, tmp_path):
    rc, out, err = cli(capsys, ["run", "--context", doc, "--query", "Where?", "--worker-backend", "openai",
                                "--worker-base-url", f"http://127.0.0.1:{free_port()}/v1", "--retries", "0",
                                "--json", "--quiet"])
    data = json.loads(out)
    assert rc == 1 and data["stop_reason"] == "worker_error"
    assert err.strip() == f"rlm run: {data['error']}; {data['hint']}"
