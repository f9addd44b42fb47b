"""The `rlm` command line: view (ours and alexzhang13/rlm traces), run, repl, demo."""
from __future__ import annotations

import json

import pytest

from agents import ChunkScanPolicy
from rlm import RLM
from rlm.cli import console_primitives, main
from rlm.data import data_dir
from rlm.view import load_events
from tests.fakes import FakeWorker, fake_factory

TRACE = data_dir() / "rlm-trace-log-example.jsonl"
DOC = "The meeting was moved to Paris. Bring the red folder. " * 3 + "The tide was low in the morning."


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "run" in capsys.readouterr().out


@pytest.mark.skipif(not TRACE.exists(), reason="shared data not found")
def test_view_reads_an_alexzhang13_rlm_trace(capsys):
    assert main(["view", str(TRACE), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "rlm-trace log" in out
    assert "Generate a random number between 1 and 100." in out
    assert "FINAL run trace-6: 1000" in out and "6 run(s)" in out
    fmt, events = load_events(TRACE)
    assert fmt == "rlm-trace"
    finals = [e.answer for e in events if e.type == "final"]
    assert finals[-1] == "1000" and len(finals) == 6
    assert any(e.type == "code" and "print(completion_context)" in e.code for e in events)


def test_view_reads_our_log_and_prints_the_trajectory(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    res = RLM(ChunkScanPolicy(chunk_chars=60), FakeWorker(), sandbox_factory=fake_factory,
              log_path=str(log)).run("Where?", DOC)
    assert main(["view", str(log), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "latent-briefing log" in out and "-> worker #1 [fake]" in out and "=== FINAL" in out
    assert f"{res.worker_calls} worker calls" in out
    assert main(["view", str(log), "--trajectory"]) == 0
    assert capsys.readouterr().out == res.trajectory + "\n"


def test_view_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text("not json\n")
    assert main(["view", str(bad)]) == 1
    assert main(["view", str(tmp_path / "missing.jsonl")]) == 1


def test_unknown_option_is_an_error():
    with pytest.raises(SystemExit):
        main(["view", "x.jsonl", "--bogus"])


def test_repl_passes_a_worker_primitive_to_the_console(monkeypatch, capsys):
    import repl.console

    fake = FakeWorker(lambda q, t: f"{q} ({t.count('[worker call')} earlier calls)")
    monkeypatch.setattr("rlm.cli._make_worker", lambda args: (fake, None))
    got = {}

    def fake_main(argv=None, primitives=None, hooks=None):
        got["argv"] = argv
        assert "trajectory" in hooks.commands and hooks.before_cell and hooks.after_cell
        got["answers"] = [primitives["worker"]("one"), primitives["worker"]("two")]
        got["batch"] = primitives["worker_batch"](["three"])
        return 0

    monkeypatch.setattr(repl.console, "main", fake_main)
    assert main(["repl", "--worker", "plain", "-q", "-c", "print(1)"]) == 0
    assert got["argv"] == ["-q", "-c", "print(1)"]
    assert got["answers"] == ["one (0 earlier calls)", "two (1 earlier calls)"]
    assert got["batch"] == ["three (2 earlier calls)"]


def test_repl_console_runs_code_with_the_worker(capsys):
    from repl import console

    prims = console_primitives(FakeWorker(), context="abc")
    rc = console.main(["-q", "--no-history", "-c", "print(worker('hi'), len(context))"], primitives=prims)
    assert rc == 0
    assert "answer to: hi 3" in capsys.readouterr().out


@pytest.mark.slow
def test_run_command_end_to_end(lm, tmp_path, capsys):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(DOC)
    log = tmp_path / "run.jsonl"
    rc = main(["run", "--context", str(ctx), "--query", "Which city was the meeting moved to?", "--worker", "briefed",
               "--chunk-chars", "120", "--max-iterations", "8", "--max-new-tokens", "16", "--log", str(log), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Answer:" in out and "worker:briefed" in out and "Median kept ratio" in out
    assert log.exists() and main(["view", str(log)]) == 0


@pytest.mark.slow
def test_run_command_with_llm_policy_and_json(lm, tmp_path, capsys, monkeypatch):
    from tests.test_agents_openai import Server, _ok

    server = Server()
    try:
        server.script.append((200, _ok("It is short.\nFINAL(short)"), {}, 0))
        ctx = tmp_path / "doc.txt"
        ctx.write_text(DOC)
        rc = main(["run", "--context", str(ctx), "--query", "How long?", "--policy", "llm", "--worker", "plain",
                   "--base-url", server.url, "--api-key", "k", "--llm-model", "m", "--json", "--quiet"])
    finally:
        server.close()
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["answer"] == "short" and data["stop_reason"] == "final"
    assert data["usage"]["orchestrator"]["input_tokens"] == 11


@pytest.mark.slow
def test_demo_command_small(lm, capsys):
    rc = main(["demo", "--max-chars", "400", "--chunk-chars", "400", "--max-new-tokens", "12"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[briefed] answer:" in out and "[text] answer:" in out
    # the headline comes first: the question, both answers, the saving, then tokens and time; the details follow
    lines = out.splitlines()
    assert lines[0].startswith("Question: What new kind of visa")
    assert lines[1].startswith("Answer, latent briefing: ") and lines[2].startswith("Answer, text handoff: ")
    assert lines[3].startswith("Saving: latent briefing read ")
    assert "fewer worker input tokens than pasting the trajectory as text" in lines[3]
    assert out.index("Details") < out.index("[briefed] answer:")


def test_demo_leads_with_the_answer_and_the_saving(monkeypatch, capsys):
    """On a tiny random model: stdout starts with the question, the answers and the saving; stderr (a pipe here)
    gets one line per run and the model loading, no per-event progress."""
    import briefing
    from tests.tiny import tiny_model

    tiny = tiny_model("llama-gqa", max_positions=2048)
    monkeypatch.setattr(briefing, "load_model", lambda model=None, **options: tiny)
    rc = main(["demo", "--max-chars", "300", "--chunk-chars", "300", "--max-new-tokens", "2"])
    assert rc == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "Question: What new kind of visa does the author propose?"
    assert lines[1].startswith("Answer, latent briefing: ") and lines[2].startswith("Answer, text handoff: ")
    assert lines[3].startswith("Saving: latent briefing read ") and "fewer worker input tokens" in lines[3]
    assert captured.out.index("worker input tokens") < captured.out.index("Details")
    assert captured.err.splitlines() == ["loading the model (embedded default)...",
                                         "[briefed] running: about 3 worker calls...",
                                         "[text] running: about 3 worker calls..."]


RUN = ["run", "--context", "-", "--query", "q"]
BAD_ARGS = [
    (["run", "--context", "missing.txt", "--query", "q"], "argument --context: no such file: missing.txt"),
    (["repl", "--context", "missing.txt"], "argument --context: no such file"),
    ([*RUN, "--keep-tokens", "0"], "argument --keep-tokens: must be an integer >= 1"),
    ([*RUN, "--tau", "nan"], "argument --tau: expected a finite number"),
    ([*RUN, "--tau", "inf"], "argument --tau: expected a finite number"),
    ([*RUN, "--budget", "abc"], "argument --budget: was replaced: use --keep-ratio"),
    ([*RUN, "--budget", "0"], "argument --budget: was replaced"),
    ([*RUN, "--keep-ratio", "1.5"], "argument --keep-ratio: must be a share in (0, 1]"),
    ([*RUN, "--keep-ratio", "abc"], "argument --keep-ratio: expected a number"),
    ([*RUN, "--tau", "1", "--keep-ratio", "0.2"], "not allowed with argument"),
    ([*RUN, "--worker", "text", "--tau", "2"], "--worker text has none"),
    ([*RUN, "--max-iterations", "0"], "argument --max-iterations: must be an integer >= 1"),
    ([*RUN, "--max-concurrent-subcalls", "0"], "argument --max-concurrent-subcalls: must be an integer >= 1"),
    ([*RUN, "--cell-timeout", "-1"], "argument --cell-timeout: must be a number > 0"),
    ([*RUN, "--chunk-chars", "x"], "argument --chunk-chars: expected an integer"),
    ([*RUN, "--max-wall-s", "inf"], "argument --max-wall-s: expected a finite number"),
    ([*RUN, "--request-timeout", "0"], "argument --request-timeout: must be a number > 0"),
    ([*RUN, "--retries", "-1"], "argument --retries: must be an integer >= 0"),
    ([*RUN, "--worker-backend", "ollama"], "argument --worker-backend: invalid choice"),
    (["demo", "--keep-tokens", "0"], "argument --keep-tokens: must be an integer >= 1 (use --keep-none"),
    (["demo", "--max-new-tokens", "-3"], "argument --max-new-tokens: must be an integer >= 1"),
    (["view", "x.jsonl", "--max-chars", "many"], "argument --max-chars: expected an integer"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS, ids=[" ".join(a[-2:]) for a, _ in BAD_ARGS])
def test_bad_values_end_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "_budget" not in err and err.startswith("rlm ")


def test_selection_options_build_the_selector():
    import briefing
    from rlm.cli import build_parser, selector_from_args

    def sel(*extra):
        return selector_from_args(build_parser().parse_args([*RUN, *extra]))

    assert sel() is None  # the worker's default, AttentionMatching(tau=1.0)
    assert sel("--tau", "2") == briefing.AttentionMatching(tau=2.0)
    assert sel("--keep-ratio", "0.2") == briefing.AttentionMatching(ratio=0.2)
    assert sel("--keep-tokens", "300") == briefing.AttentionMatching(tokens=300)
    assert sel("--keep-tokens", "1") == briefing.AttentionMatching(tokens=1)  # an int count, never a ratio
    assert sel("--keep-ratio", "1") == briefing.AttentionMatching(ratio=1.0)  # all positions, not one
    assert isinstance(sel("--keep-all"), briefing.KeepAll) and isinstance(sel("--keep-none"), briefing.KeepNone)


def test_bench_command_without_the_benchmarks_says_what_to_do(monkeypatch, capsys, tmp_path):
    """`rlm bench` finds the benchmarks through their entry point, never in the current folder."""
    import importlib.metadata as md

    import rlm.cli

    (tmp_path / "benchmarks" / "rlm_bench").mkdir(parents=True)   # a look-alike folder where the user stands
    (tmp_path / "benchmarks" / "__init__.py").write_text("raise SystemExit('imported from the current folder')")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(md, "entry_points", lambda **kw: ())
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == rlm.cli.BENCH_MISSING + "\n" and "pip install -e '.[bench]'" in err

    class Missing:
        def load(self):
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(md, "entry_points", lambda **kw: (Missing(),))
    assert main(["bench"]) == 2
    assert "missing module 'matplotlib'" in capsys.readouterr().err


def test_bench_command_is_the_installed_entry_point():
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="rlm.commands", name="bench")
    assert ep.value == "benchmarks.rlm_bench.cli:main"


def test_bench_command_finds_the_checkout(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0 and "rlm bench" in capsys.readouterr().out
