"""Issue 27, parts 2 and 3: worker_batch on a bounded pool, per-query errors, budgets under concurrency, the
reference RLM's names, and RLM.arun. Tiny fakes and a loopback HTTP server; no model is loaded."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agents import ChatBackend, ChatResponse, LLMPolicy, OpenAIChatBackend, OrchestratorPolicy, RLM_SYSTEM_PROMPT
from agents import ScriptedPolicy, Step, TextWorker, Worker, WorkerAnswer
from benchmarks.concurrency_bench import LoopbackChatServer
from rlm import RLM, WORKER_ERROR_PREFIX, Budgets, RLMWorker, read_log
from tests.chat_server import ChatServer, free_port
from tests.fakes import FakeWorker, fake_factory


class SlowWorker(Worker):
    """Answers `query.upper()` after `delay(query)` seconds, billing `tokens` (input, output) per call; a query in
    `fail` raises. Records each call's (query, start, end), the trajectories it read and the most calls at once."""

    def __init__(self, delay=lambda q: 0.05, fail=(), tokens=(8, 2), name="slow") -> None:
        self.delay, self.fail, self.tokens, self.name = delay, set(fail), tokens, name
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.spans: list[tuple[str, float, float]] = []
        self.trajectories: list[str] = []
        self.threads: set[str] = set()
        self.started = threading.Event()

    def answer(self, query: str, trajectory: str) -> WorkerAnswer:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.threads.add(threading.current_thread().name)
        self.started.set()
        t0 = time.monotonic()
        try:
            time.sleep(self.delay(query))
            if query in self.fail:
                raise RuntimeError(f"cannot answer {query}")
            return WorkerAnswer(text=query.upper(), input_tokens=self.tokens[0], output_tokens=self.tokens[1],
                                worker=self.name)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.spans.append((query, t0, time.monotonic()))
                self.trajectories.append(trajectory)


def make(policy, worker, log_path=None, **budgets) -> RLM:
    return RLM(policy, worker, sandbox_factory=fake_factory, budgets=Budgets(**budgets), log_path=log_path)


def outputs(res):
    return [e for e in res.events if e.type == "output"]


QUERIES = [f"q{i}" for i in range(8)]
BATCH = Step(code=f"r = worker_batch({QUERIES!r})\nprint(r)")


# -- 2. concurrency: order, errors, the pool ----------------------------------------------------------
def test_answers_come_back_in_query_order_whatever_answers_first(tmp_path):
    worker = SlowWorker(delay=lambda q: 0.02 * (8 - int(q[1:])))       # the last query answers first
    log = tmp_path / "run.jsonl"
    res = make(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker, log_path=str(log), max_concurrent_subcalls=4).run(
        "q", "ctx")
    assert res.answer == str([q.upper() for q in QUERIES])
    calls = res.worker_events()
    assert sorted(c.query for c in calls) == QUERIES and res.worker_calls == 8
    assert [c.query for c in calls] != QUERIES                     # each logged when it answered, not in query order
    assert sorted(c.index for c in calls) == list(range(1, 9)) and len({c.call_id for c in calls}) == 8
    assert [e.query for e in read_log(log) if e.type == "worker_call"] == [c.query for c in calls]
    # every query of the batch read the trajectory as it was before the batch
    assert len(set(worker.trajectories)) == 1 and "[worker" not in worker.trajectories[0]
    assert res.usage["worker:slow"].calls == 8 and res.graph_summary.calls == 8


def test_a_failed_query_gives_an_error_value_and_the_rest_stand(tmp_path):
    """The policy sees which failed: in the REPL (the error value in its place) and in the events."""
    seen = {}

    class Checks(OrchestratorPolicy):
        def step(self, state):
            if state.iteration == 0:
                return BATCH
            if state.iteration == 1:
                seen["errors"] = {e.query: e.error for e in state.events if e.type == "worker_call" and e.error}
                return Step(code="failed = [i for i, a in enumerate(r) if a.startswith('[worker error]')]\n"
                                 "ok = [a for a in r if not a.startswith('[worker error]')]\nprint(failed)")
            return Step(text="FINAL_VAR(ok)")

    log = tmp_path / "run.jsonl"
    res = make(Checks(), SlowWorker(fail={"q2", "q5"}), log_path=str(log)).run("q", "ctx")
    assert res.stop_reason == "final"
    assert outputs(res)[1].stdout.strip() == "[2, 5]"
    assert res.answer == str([q.upper() for q in QUERIES if q not in ("q2", "q5")])
    assert set(seen["errors"]) == {"q2", "q5"} and "cannot answer q2" in seen["errors"]["q2"]
    first = outputs(res)[0].stdout
    assert f"'{WORKER_ERROR_PREFIX}RuntimeError: cannot answer q5'" in first
    # nothing lost: every query has its event in the log, answered or failed
    logged = [e for e in read_log(log) if e.type == "worker_call"]
    assert len(logged) == 8 and sum(e.error is not None for e in logged) == 2


def test_the_error_value_crosses_the_real_sandbox():
    res = RLM(ScriptedPolicy([Step(code="r = llm_query_batched(['a', 'b', 'c'])\n"
                                        "print([x.startswith('[worker error]') for x in r])"), "FINAL_VAR(r)"]),
              SlowWorker(delay=lambda q: 0.01, fail={"b"})).run("q", "ctx")
    assert outputs(res)[0].stdout.strip() == "[False, True, False]" and res.stop_reason == "final"


@pytest.mark.parametrize("pool", [1, 3])
def test_the_pool_is_bounded(pool):
    worker = SlowWorker(delay=lambda q: 0.1)
    res = make(ScriptedPolicy([Step(code="r = worker_batch(['x%d' % i for i in range(10)])"), "FINAL(done)"]),
               worker, max_concurrent_subcalls=pool).run("q", "ctx")
    assert res.worker_calls == 10 and worker.max_in_flight == pool


def test_a_worker_that_is_not_thread_safe_gets_one_call_at_a_time_in_the_calling_thread():
    class Stateful(SlowWorker):
        thread_safe = False

    worker = Stateful(delay=lambda q: 0.05, fail={"q3"})
    res = make(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker, max_concurrent_subcalls=8).run("q", "ctx")
    assert worker.max_in_flight == 1 and worker.threads == {threading.current_thread().name}
    assert eval(res.answer)[3] == f"{WORKER_ERROR_PREFIX}RuntimeError: cannot answer q3"
    assert [c.query for c in res.worker_events()] == QUERIES       # one after another: in query order


class SharedBatch(SlowWorker):
    """A worker with shared batch work: `answer_batch` answers the whole list in one call."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.batches: list[list[str]] = []

    def answer_batch(self, queries, trajectory):
        self.batches.append(list(queries))
        return [RuntimeError("no answer") if q in self.fail else
                WorkerAnswer(text=q.upper(), input_tokens=self.tokens[0], output_tokens=self.tokens[1])
                for q in queries]


def test_a_worker_with_its_own_answer_batch_gets_the_batch_in_one_call():
    worker = SharedBatch(fail={"q6"})
    res = make(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker).run("q", "ctx")
    assert worker.batches == [QUERIES] and not worker.spans          # one call, no answer() per query
    answers = eval(res.answer)
    assert answers[6] == f"{WORKER_ERROR_PREFIX}RuntimeError: no answer" and answers[7] == "Q7"
    calls = res.worker_events()
    assert [c.query for c in calls] == QUERIES and calls[6].error and res.usage["worker:slow"].calls == 7
    # with max_tokens and no call cost known yet, the first query goes alone, then the rest together
    worker = SharedBatch()
    make(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker, max_tokens=10_000).run("q", "ctx")
    assert worker.batches == [QUERIES[:1], QUERIES[1:]]


def test_every_query_failing_on_the_server_ends_the_run_as_worker_error():
    backend = OpenAIChatBackend(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="x", max_retries=0)
    res = make(ScriptedPolicy([Step(code="r = worker_batch(['a', 'b'])\nprint(r)"), "FINAL(no)"]),
               TextWorker(backend=backend)).run("q", "ctx")
    assert res.stop_reason == "worker_error" and "could not be reached" in res.error
    assert outputs(res)[0].stdout.count(WORKER_ERROR_PREFIX + "BackendError") == 2


# -- 2. budgets under concurrency ----------------------------------------------------------------------
def test_max_worker_calls_admits_what_fits_and_refuses_the_rest():
    worker = SlowWorker()
    res = make(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker, max_worker_calls=5).run("q", "ctx")
    assert res.worker_calls == 5 and len(worker.spans) == 5 and res.stop_reason == "max_worker_calls"
    printed = eval(outputs(res)[0].stdout)
    assert [a.startswith(WORKER_ERROR_PREFIX) for a in printed] == [False] * 5 + [True] * 3
    assert printed[7] == f"{WORKER_ERROR_PREFIX}not run: the max_worker_calls budget is spent"
    assert any(e.type == "notice" and "3 of 8 queries not run" in e.text for e in res.events)
    # a batch when nothing is left: refused as worker() is
    res = make(ScriptedPolicy([BATCH, BATCH]), SlowWorker(), max_worker_calls=8).run("q", "ctx")
    assert "BudgetExhausted" in outputs(res)[1].error and res.worker_calls == 8


def test_max_tokens_is_not_overshot_by_calls_in_flight():
    """10 tokens a call, a budget of 35: one after another, the 4th call starts (30 < 35) and the 5th is refused.
    A batch of 8 on a pool of 4 makes the same 4 calls: the first alone (its cost unknown), then 3 at once."""
    def run(pool):
        worker = SlowWorker(delay=lambda q: 0.1, tokens=(8, 2))
        res = make(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker, max_tokens=35,
                   max_concurrent_subcalls=pool).run("q", "ctx")
        return res, worker

    sequential, _ = run(1)
    res, worker = run(4)
    assert res.worker_calls == sequential.worker_calls == 4
    assert res.total_tokens == sequential.total_tokens == 40 and res.stop_reason == "max_tokens"
    assert worker.max_in_flight == 3                               # concurrent, within the budget
    assert eval(outputs(res)[0].stdout)[4:] == [f"{WORKER_ERROR_PREFIX}not run: the max_tokens budget is spent"] * 4


# -- 2. the reference RLM's names -----------------------------------------------------------------------
REFERENCE_STYLE_PROMPT = """You are tasked with answering a query with associated context. You can access, transform, \
and analyze this context interactively in a REPL environment that can recursively query sub-LLMs, which you are \
strongly encouraged to use as much as possible. You will be queried iteratively until you provide a final answer.

The REPL environment is initialized with:
1. A `context` variable that contains extremely important information about your query.
2. A `llm_query` function that allows you to query an LLM inside your REPL environment.
3. A `llm_query_batched(prompts: List[str]) -> List[str]` function that queries several prompts concurrently;
the results come back in the same order as the prompts.
4. The ability to use `print()` statements to view the output of your REPL code.

When you want to execute Python code in the REPL environment, wrap it in triple backticks with the 'repl' language
identifier, for example:
```repl
chunk = context[:10000]
answer = llm_query(f"What is the magic number in the context? Here is the chunk: {chunk}")
print(answer)
```

When you are done, provide a final answer with FINAL(your final answer here) or FINAL_VAR(variable_name) to return a
variable you created in the REPL. Think step by step, then act immediately."""

REFERENCE_STYLE_STEPS = [
    "Let me first look at the context.\n```repl\nprint(type(context), len(context))\nprint(context[:80])\n```",
    "The context is long; I will split it into chunks and query them in parallel.\n```repl\n"
    "chunk_size = len(context) // 4\n"
    "chunks = [context[i * chunk_size:(i + 1) * chunk_size] for i in range(4)]\n"
    "prompts = [f\"Find the magic number. Only answer if it is in this chunk:\\n{chunk}\" for chunk in chunks]\n"
    "answers = llm_query_batched(prompts)\n"
    "for i, answer in enumerate(answers):\n"
    "    print(f\"I got the answer from chunk {i}: {answer}\")\n```",
    "```repl\nfinal_answer = llm_query(\"Aggregating the answers per chunk, what is the magic number?\\n\\n\" + "
    "\"\\n\".join(answers))\nprint(final_answer)\n```",
    "I have the answer.\nFINAL_VAR(final_answer)",
]


class ScriptedChat(ChatBackend):
    """An orchestrator model that replies with fixed texts, in order, and keeps the messages it was sent."""

    name = "scripted-chat"

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.sent = list(replies), []

    def complete(self, messages, **overrides):
        self.sent.append(messages)
        return ChatResponse(text=self.replies[len(self.sent) - 1], input_tokens=50, output_tokens=20)


def magic_worker(query: str, trajectory: str) -> str:
    if query.startswith("Aggregating"):
        return next((line.split(": ")[-1] for line in query.splitlines() if "4417" in line), "unknown")
    return "The magic number is 4417" if "magic number is 4417" in query else "not in this chunk"


def test_an_orchestrator_prompt_written_for_the_reference_rlm_runs_unchanged():
    context = "filler. " * 290 + "The magic number is 4417. " + "filler. " * 210      # in the third of 4 chunks
    chat = ScriptedChat(REFERENCE_STYLE_STEPS)
    worker = FakeWorker(magic_worker)
    res = RLM(LLMPolicy(chat, system_prompt=REFERENCE_STYLE_PROMPT), worker, budgets=Budgets(max_iterations=6)).run(
        "What is the magic number?", context)     # the real sandbox
    assert res.stop_reason == "final" and res.answer == "The magic number is 4417"
    assert all(sent[0] == {"role": "system", "content": REFERENCE_STYLE_PROMPT} for sent in chat.sent)
    assert not any(o.error for o in outputs(res))
    assert res.worker_calls == 5 and "I got the answer from chunk 2: The magic number is 4417" in outputs(res)[1].stdout


def test_rlm_query_is_a_nested_run_and_falls_back_to_the_worker_without_one():
    code = "a = rlm_query('sub question')\nb = rlm_query_batched(['one', 'two'])\nprint(a, b)"
    child = RLM(ScriptedPolicy([Step(code="FINAL(worker(query) + ' via child')")]), FakeWorker(name="leaf"),
                sandbox_factory=fake_factory)
    res = make(ScriptedPolicy([Step(code=code), "FINAL_VAR(b)"]), RLMWorker(child), max_depth=1).run("q", "ctx")
    assert res.answer == str(["answer to: one via child", "answer to: two via child"])
    assert all(c.result.child_run for c in res.worker_events()) and res.worker_calls == 3
    assert not any(e.type == "notice" for e in res.events)
    # a worker that does not nest answers itself, and the run says so once
    res = make(ScriptedPolicy([Step(code=code), "FINAL_VAR(b)"]), FakeWorker()).run("q", "ctx")
    assert res.answer == str(["answer to: one", "answer to: two"])
    notices = [e.text for e in res.events if e.type == "notice"]
    assert len(notices) == 1 and "does not start nested runs" in notices[0]


def test_the_system_prompt_says_how_a_failed_query_looks():
    assert WORKER_ERROR_PREFIX.strip() in RLM_SYSTEM_PROMPT and "llm_query_batched" in RLM_SYSTEM_PROMPT


# -- 2. HTTP workers: the requests really are in flight together ------------------------------------------
def test_worker_batch_against_an_http_server_has_requests_in_flight_together():
    with LoopbackChatServer(delay_s=0.2) as server:
        worker = TextWorker(backend=OpenAIChatBackend(base_url=server.url, api_key="x", max_retries=0))
        res = RLM(ScriptedPolicy([BATCH, "FINAL_VAR(r)"]), worker, budgets=Budgets(max_concurrent_subcalls=4)).run(
            "q", "ctx")
    assert res.stop_reason == "final" and len(eval(res.answer)) == 8 and server.count == 8
    assert 3 <= server.max_in_flight <= 4


def test_the_cli_option_sets_the_pool(tmp_path, capsys):
    from rlm.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text("The meeting was moved to Paris.")
    log = tmp_path / "run.jsonl"
    ask = "```repl\nanswers = llm_query_batched(['question %d' % i for i in range(6)])\nprint(answers)\n```"
    orchestrator = ChatServer([ask, "FINAL(done)"]).start()
    try:
        with LoopbackChatServer(delay_s=0.1) as server:
            rc = main(["run", "--context", str(doc), "--query", "Where?", "--policy", "llm", "--base-url",
                       orchestrator.url, "--worker-backend", "openai", "--worker-base-url", server.url, "--log",
                       str(log), "--quiet", "--max-concurrent-subcalls", "2"])
    finally:
        orchestrator.close()
    assert rc == 0, capsys.readouterr().err
    assert server.count == 6 and server.max_in_flight == 2
    start = next(e for e in read_log(log) if e.type == "run_start")
    assert start.budgets["max_concurrent_subcalls"] == 2


def test_budgets_refuse_a_pool_of_zero():
    with pytest.raises(ValueError, match=r"^Budgets: max_concurrent_subcalls: input should be greater than or equal "
                                         r"to 1, got 0\.$"):
        Budgets(max_concurrent_subcalls=0)


# -- 3. async ----------------------------------------------------------------------------------------------
def test_two_aruns_progress_at_once():
    workers = [SlowWorker(delay=lambda q: 0.3, name=f"w{i}") for i in range(2)]
    steps = [Step(code="a = worker('first')"), Step(code="b = worker('second')"), "FINAL_VAR(b)"]

    async def both():
        return await asyncio.gather(*(make(ScriptedPolicy(steps), w).arun("q", "ctx") for w in workers))

    results = asyncio.run(both())
    assert [r.answer for r in results] == ["SECOND", "SECOND"]
    (_, s0, e0), (_, s1, e1) = workers[0].spans[0], workers[1].spans[0]
    assert max(s0, s1) < min(e0, e1)                               # their first calls overlapped


def test_the_event_loop_keeps_ticking_during_a_run_and_a_worker_call():
    worker = SlowWorker(delay=lambda q: 0.3)
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event):
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main():
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        res = await make(ScriptedPolicy([Step(code="a = worker('x')"), "FINAL_VAR(a)"]), worker).arun("q", "ctx")
        answer = await worker.aanswer("y", "")
        answers = await SlowWorker(delay=lambda q: 0.01, fail={"b"}).aanswer_batch(["a", "b"], "")
        stop.set()
        await tick
        return res, answer, answers

    res, answer, answers = asyncio.run(main())
    assert res.answer == "X" and answer.text == "Y"
    assert answers[0].text == "A" and isinstance(answers[1], RuntimeError)
    for _, start, end in worker.spans:                             # the run's call, then aanswer's
        assert sum(start < t < end for t in ticks) >= 3


def test_cancelling_arun_stops_the_run_with_its_stop_record():
    worker = SlowWorker(delay=lambda q: 0.2)
    finals = []
    done = threading.Event()

    def on_event(e):
        if e.type == "final":
            finals.append(e)
            done.set()

    rlm = RLM(ScriptedPolicy([Step(code="a = worker('x')")], repeat=True), worker, sandbox_factory=fake_factory,
              budgets=Budgets(max_iterations=None, max_worker_calls=None), on_event=on_event)

    async def main():
        task = asyncio.create_task(rlm.arun("q", "ctx"))
        while not worker.started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())                                            # waits for the run's thread to end
    assert done.wait(5) and finals[0].stop_reason == "interrupted"
    assert finals[0].error.startswith("cancelled (the task awaiting RLM.arun)")
    assert len(worker.spans) <= 2
