"""Which representative finds a folded-away fact: the dev measurement behind latent recall's design (issue 29).

    python -m benchmarks.recall_rank [--case long|dense] [--episodes 8] [--tokens 4096] [--window 2048]
        [--split dev] [--model NAME] [--dump DIR] [--out DIR]
    python -m benchmarks.recall_rank --offline DIR [DIR ...] [--out DIR]

`--dump` also saves each episode's hidden states at the last three layers (float32) and its questions; `--offline`
ranks them again with round 5's whitening candidates (`offline`) in seconds, without the model.

`--case dense` (issue 29's shape): 12 facts (the split's three keys of each of the four kinds of the long suite) and
36 decoy facts (the same four statement forms about other keys, `DECOY_KEYS`) spread through the first 48% of a
4.2k-token trajectory rendered like a long-suite episode, read by a cache of a 2,048-token budget (`--budget`); each
fact asked in its own words and paraphrased.

`--case long` (default): on long-suite episodes (`benchmarks.rlm_bench.long_episodes`, dev split by default: its
own keys and seeds) the trajectory is read by a folding `TrajectoryCache` of the suite's fast size (window 2,048:
cache budget 1,920 less the recall's, `agents.recall.default_recall_tokens`: 384 tokens since round 9, an eighth
before), while forward hooks keep every token's hidden state at every decoder layer and its pre-RoPE key (what a
representative computed at extend time could see). Each question, in the fact's own words and paraphrased,
is then put to every candidate ranker of the trajectory's blocks:

- hidden: cosine between the mean hidden state of the question and each block's mean hidden state, averaged over
  a set of layers (`LAYER_SETS`), raw, centred on the blocks' mean or standardised per dimension by the blocks' mean
  and spread (what the shipped ranking does); the question read as the call prompt forwarded
  over the folded cache ("prompt": its question tokens, "prompt-all": all its tokens) or alone with no cache ("alone");
- keys: the question's pre-RoPE queries against each block's mean pre-RoPE key (Quest-like key summaries), averaged
  over layers, heads and query tokens;
- bm25: BM25 over the same blocks' text; text-bm25: `TextRecall`'s own chunks (what `BriefedWorker` ships);
- shipped/latent, shipped/both: what `agents.recall.LatentRecall` computes from the cache's own archive
  (`briefing.latent.lookup`'s scores; rank="both": fused with bm25 by reciprocal rank), at the archive's block.

The cache is built with the default `briefing.ArchivePolicy()`, so the run also reports bytes per trajectory token of
the cache, the archive (int8 keys and values of every folded token) and the representatives.

Only facts the cache no longer holds whole are asked (a fact in its unfolded tail is in view), and every ranker
ranks what latent recall can bring back: the blocks before that tail. Reported per ranker and question form: the
fact's median rank among those blocks, top-8 hits, and availability at a recall budget: whether the recalled tokens
(the top blocks, each widened by `pad` tokens on both sides, up to the budget) hold every token of the fact's
statement. Nothing here changes a default by itself; docs/benchmarks.md says
which figures chose what.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

LAYER_SETS = {"last1": [-1], "last3": [-3, -2, -1], "last6": [-6, -5, -4, -3, -2, -1], "mid3": [0.5],
              "twothirds3": [0.67]}


def layer_ids(name: str, n: int) -> list[int]:
    spec = LAYER_SETS[name]
    if isinstance(spec[0], float):  # three layers around that depth
        c = int(spec[0] * n)
        return [c - 1, c, c + 1]
    return [n + i for i in spec]


def statement_tokens(offsets: list[tuple[int, int]], start: int, stop: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if a < stop and b > start]


def picks(order: list[int], block: int, pad: int, budget: int, n_tokens: int, sink: int) -> set[int]:
    """Tokens recalled: the blocks in `order`, each widened by `pad` tokens per side, until `budget` tokens."""
    got: set[int] = set()
    for j in order:
        lo, hi = max(sink, j * block - pad), min(n_tokens, (j + 1) * block + pad)
        new = set(range(lo, hi)) - got
        if got and len(got) + len(new) > budget:
            break
        got |= new
    return got


# decoy keys of the dense case, per kind of `long_episodes.KINDS` (codes, names, colours, animals): nine each, no key
# of either split
DECOY_KEYS = (
    ("bike lock code", "wifi password", "bank card PIN", "suitcase code", "phone passcode", "boiler serial number",
     "parcel tracking number", "flight number", "ticket number"),
    ("plumber", "yoga instructor", "bakery owner", "school principal", "football coach", "bank manager",
     "night nurse", "tour guide", "church organist"),
    ("kitchen wall", "tool shed", "family car", "bedroom ceiling", "tractor", "fishing hut", "school bus",
     "park bench", "barn roof"),
    ("zoo poster", "cereal box", "rugby team's badge", "museum banner", "bakery sign", "weather vane",
     "library stamp", "bus company logo", "toy shop window"),
)


def make_dense_case(seed: int, target_tokens: int = 4200, split: str = "dev", span: float = 0.48,
                    chars_per_token: float = 4.1) -> Any:
    """Issue 29's case shape from the long suite's generators: 12 facts (the split's three keys of each kind) and
    36 decoys (`DECOY_KEYS`, other values) at random section boundaries within the first `span` of the trajectory,
    carried as the long suite carries them (a REPL output, a worker answer or a note); both question forms per fact."""
    import random

    from agents.workers.base import WorkerAnswer
    from benchmarks.rlm_bench.long_episodes import (CARRIERS, KINDS, SPLIT_KEYS, LongEpisode, Question, _codes,
                                                    _sections)
    from rlm.events import CellOutput, CodeCell, OrchestratorMessage, RunStart, WorkerCall
    from rlm.trajectory import Trajectory

    rng = random.Random(f"recall-dense:{seed}:{target_tokens}:{split}")
    sections = _sections(rng, int(target_tokens * chars_per_token))
    n = len(sections)
    facts = []  # (kind, key text, value, Key or None)
    for k, kind in enumerate(KINDS):
        values = _codes(rng, 12) if not kind.values else [rng.choice(kind.values) for _ in range(12)]
        for i, key in enumerate(kind.keys[SPLIT_KEYS[split]]):
            facts.append((kind, key.key, values[i], key))
        for i, key in enumerate(DECOY_KEYS[k]):
            facts.append((kind, key, values[3 + i], None))
    last = max(1, int(span * n))
    at: dict[int, list[int]] = {}
    for j in range(len(facts)):
        at.setdefault(rng.randrange(last), []).append(j)
    traj = Trajectory(run_id=f"dense-{seed}")

    def add(e: Any) -> None:
        e.run_id, e.seq = traj.run_id, len(traj.events)
        traj.append(e, stamp=False)

    calls = 0
    add(RunStart(query="Go through the document, collect every fact it states about people, objects and codes, then "
                       "answer questions.", context_length=sum(map(len, sections)), worker={"name": "worker"}))
    for s, section in enumerate(sections):
        it = s + 1
        add(OrchestratorMessage(iteration=it, text=f"Reading section {it} of {n}."))
        add(CodeCell(iteration=it, cell=0, code=f"section = sections[{s}]\nprint(section)"))
        add(CellOutput(iteration=it, cell=0, stdout=section))
        for j in at.get(s, []):
            kind, key, value, _ = facts[j]
            statement = kind.statement.format(key=key, value=value)
            carrier = CARRIERS[(seed + j) % 3]
            if carrier == "output":
                add(CodeCell(iteration=it, cell=1, code="print(extract_facts(section))"))
                add(CellOutput(iteration=it, cell=1, stdout=f"Found: {statement}."))
            elif carrier == "worker":
                calls += 1
                add(WorkerCall(call_id=f"dense-{seed}.{calls}", iteration=it, index=calls,
                               query=f"Does section {it} state a fact? Quote it.",
                               result=WorkerAnswer(text=f"Yes: {statement}.", worker="worker")))
            else:
                add(OrchestratorMessage(iteration=it, text=f"Note to self: {statement}. I will need this later."))
    text = traj.text
    questions = []
    for j, (kind, key, value, k) in enumerate(facts):
        if k is None:
            continue
        statement = kind.statement.format(key=key, value=value)
        for form, question, lead in (("own", kind.question.format(key=key), kind.lead.format(key=key)),
                                     ("paraphrase", k.paraphrase, k.lead)):
            questions.append(Question(key, value, 0, text.index(statement) / len(text), question, lead, [value],
                                      statement, form, j))
    return LongEpisode(f"dense-s{seed}-t{target_tokens}", seed, target_tokens, "", [(text, None)], questions)


def block_means(X: torch.Tensor, size: int) -> torch.Tensor:
    """[ceil(T / size), ...]: the mean of every `size` consecutive rows of X [T, ...] (the last group may be
    shorter), as the archive's representatives average a block's tokens."""
    T = X.shape[0]
    nb = math.ceil(T / size)
    extra = nb * size - T
    Xp = torch.cat([X, X.new_zeros(extra, *X.shape[1:])]) if extra else X                  # [nb * size, ...]
    cnt = torch.full((nb,), float(size), dtype=X.dtype, device=X.device)                  # [nb]
    cnt[-1] = size - extra
    return Xp.view(nb, size, *X.shape[1:]).sum(1) / cnt.view(-1, *([1] * (X.dim() - 1)))


def offline(folders: list[str], budgets: tuple[int, ...] = (960,), pad: int = 8, block: int = 32) -> dict:
    """Round 5's candidates, ranked over the blocks of `--dump` episodes (the last three layers' hidden states of every
    token, the question's over the cache): per dimension standardised (the ranking before round 5; it equals the
    dumped `shipped` scores up to the statistics' blocks), standardised with the top principal directions removed
    (`drop`), whitened by the covariance shrunk toward a multiple of the identity (`iso`) or toward its diagonal
    (`diag`, `briefing.latent.whiten`, what ships), and the best 8-token part of each block (`sub8max`); and, over the
    shipped whitening (`latent.SHRINK`), pseudo-relevance feedback (`prf{k}/{a}`: the question moved by `a` toward the
    mean of its top k folded blocks), the neighbouring blocks' scores added (`neighbours{w}`), a hubness penalty
    (`csls10/{w}`: 2 cos - w x each block's mean cosine with its 10 nearest blocks) and the layers' cosines z-scored
    over the folded blocks before their mean (`zlayers`); and round 11's `peaks{k}`, the block means' score plus
    the mean of each block's k best tokens at the last layer, both standardised (`latent.block_scores(peaks=k)`);
    round 12, on dumps that keep every call-prompt token's states: the whole prompt's mean as the question
    (`prompt/whiten`, `prompt/raw`: no whitening), the raw cosine to the prompt's tokens before the question alone
    (`before/raw`: the same for every question, a prior on the blocks), and each of those standardised and added to
    the block means' score or to `peaks4` (`means+prompt/raw`, `means+before/raw`, `peaks4+before/raw`); round 21:
    the prompt's last token's states (`last/whiten`: where the answer's first token is predicted) and the mean of the
    template's tokens after the question (`after/whiten`) as the question, alone or added, standardised, to `peaks4`,
    and `sub8max` added to `peaks4` (`peaks4+sub8max`); round 25, on dumps that keep the trajectory's sentences
    (`agents.recall.sentence_units`): the shipped block ranking picked as `latent.pick` picks it (`peaks4/pick`, pad
    8) against the sentences scored by `latent.score_units` and picked whole (`units/peaks4`, pad 0); their rank is
    the first pick holding a token of the fact.
    Availability, per budget: the fact's every token in the top blocks, each widened by `pad`, within that many
    tokens."""
    from agents.recall import LatentRecall
    from briefing.latent import SHRINK, pick, score_units, token_peaks, whiten, within

    shipped_pad = LatentRecall(units="blocks").pad

    unit = torch.nn.functional.normalize

    def cosine(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:    # [n, l, h], [l, h] -> [n]
        return (x * q[None]).sum(-1).mean(-1)

    def drop(B: torch.Tensor, Q: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
        mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)
        Bs, Qs = (B - mu) / sd, (Q - mu) / sd
        for t in range(B.shape[1]):
            U = torch.linalg.svd((ref[:, t] - mu[t]) / sd[t], full_matrices=False).Vh[:k]     # [k, h]
            Bs[:, t] -= (Bs[:, t] @ U.T) @ U
            Qs[t] -= (Qs[t] @ U.T) @ U
        return cosine(unit(Bs, dim=-1), unit(Qs, dim=-1))

    def iso(B: torch.Tensor, Q: torch.Tensor, ref: torch.Tensor, a: float) -> torch.Tensor:
        out = []
        for t in range(B.shape[1]):
            mu = ref[:, t].mean(0)
            X = ref[:, t] - mu
            C = X.T @ X / X.shape[0]
            C = (1 - a) * C + a * C.trace() / C.shape[0] * torch.eye(C.shape[0])
            L = torch.linalg.cholesky(C)
            bw = torch.linalg.solve_triangular(L, (B[:, t] - mu).T, upper=False).T
            qw = torch.linalg.solve_triangular(L, (Q[t] - mu)[:, None], upper=False)[:, 0]
            out.append(unit(bw, dim=-1) @ unit(qw, dim=0))
        return torch.stack(out, -1).mean(-1)

    rows: dict[tuple[str, str, int], list[tuple[int, bool]]] = {}
    for folder in folders:
        for f in sorted(Path(folder).glob("*.pt")):
            ep = torch.load(f)
            H, T, sink = ep["H"].float(), ep["T"], ep["sink"]
            B = unit(block_means(H, block), dim=-1)                                      # [nb, l, h] as the archive
            S8 = unit(block_means(H, 8), dim=-1)                                         # [nb * 4, l, h]
            for qd in ep["questions"]:
                cand, folded, fact = qd["cand"], qd["folded"], qd["fact"]
                Q = unit(qd["q"].float().mean(0), dim=-1)                            # [l, h]
                ref = B[cand]
                sc = {"shipped-at-dump": qd["shipped"][:B.shape[0]], "standardised": cosine(*whiten(B, Q, ref, 1.0))}
                for k in (5, 10, 20):
                    sc[f"drop{k}"] = drop(B, Q, ref, k)
                for a in (0.1, 0.3):
                    sc[f"iso{a}"] = iso(B, Q, ref, a)
                for a in (0.3, 0.6, 0.7, 0.8, 0.9):
                    sc[f"diag{a}"] = cosine(*whiten(B, Q, ref, a))
                Bw, Qw = whiten(B, Q, ref, SHRINK)                                       # [nb, l, h], [l, h]
                base = cosine(Bw, Qw)                                                    # [nb]
                fold_t = torch.tensor(folded)                                            # [f]
                for k in (3, 5, 10):
                    top = fold_t[base[fold_t].topk(min(k, len(folded))).indices]         # [k]
                    for a in (0.3, 0.6):
                        sc[f"prf{k}/{a}"] = cosine(Bw, unit(Qw + a * Bw[top].mean(0), dim=-1))
                side = torch.zeros_like(base)                                            # [nb] neighbours' sum
                side[1:] += base[:-1]
                side[:-1] += base[1:]
                for w in (0.15, 0.3):
                    sc[f"neighbours{w}"] = base + w * side / 2
                near = torch.einsum("nlh,mlh->nm", Bw, Bw[cand]) / Bw.shape[1]           # [nb, m] mean cosine
                hub = near.topk(min(11, near.shape[1]), dim=1).values[:, 1:].mean(1)     # [nb] (the first: itself)
                for w in (0.5, 1.0):
                    sc[f"csls10/{w}"] = 2 * base - w * hub
                per_layer = (Bw * Qw[None]).sum(-1)                                      # [nb, l]
                z = (per_layer - per_layer[fold_t].mean(0)) / per_layer[fold_t].std(0).clamp_min(1e-6)
                sc["zlayers"] = z.mean(-1)
                per = block // 8
                sub = [j * per + i for j in cand for i in range(per) if j * per + i < S8.shape[0]]
                s8 = cosine(*whiten(S8, Q, S8[sub], 0.6))
                s8 = torch.cat([s8, s8.new_full((B.shape[0] * per - s8.shape[0],), float("-inf"))])
                sc["sub8max/diag0.6"] = s8.view(-1, per).amax(-1)
                # round 11: the shipped ranking plus each block's k best tokens (`latent.block_scores(peaks=k)`)
                ok = torch.zeros(B.shape[0], dtype=torch.bool)
                ok[cand] = True
                for k in (2, 4, 8):
                    peak = token_peaks(unit(H[:, -1], dim=-1), Q[-1], B[cand, -1], SHRINK, k, block, B.shape[0])

                    def z(x: torch.Tensor) -> torch.Tensor:
                        return (x - x[ok].mean()) / x[ok].std()

                    sc[f"peaks{k}"] = z(base) + z(peak)
                if "prompt" in qd:   # round 12: the question's vector from more of the call prompt than its words
                    P, lo = qd["prompt"].float(), qd["span"][0]                          # [n, l, h] every prompt token
                    every = unit(P.mean(0), dim=-1)                                      # [l, h] the whole prompt
                    before = unit(P[:lo].mean(0), dim=-1)                                # [l, h] no question in it
                    sc["prompt/whiten"] = cosine(*whiten(B, every, ref, SHRINK))
                    sc["prompt/raw"] = cosine(B, every)
                    sc["before/raw"] = cosine(B, before)

                    def zf(x: torch.Tensor) -> torch.Tensor:   # standardised over the folded blocks
                        return (x - x[fold_t].mean()) / x[fold_t].std()

                    sc["means+prompt/raw"] = zf(base) + zf(sc["prompt/raw"])
                    sc["means+before/raw"] = zf(base) + zf(sc["before/raw"])
                    sc["peaks4+before/raw"] = sc["peaks4"] + zf(sc["before/raw"])
                    # round 21: the prompt's last token (where the answer's first token is predicted) and the tokens
                    # after the question (the template's tail), as the question or beside the shipped score
                    hi = min(qd["span"][1], len(P) - 1)   # the template's tail; at least the last token
                    last, after = unit(P[-1], dim=-1), unit(P[hi:].mean(0), dim=-1)      # [l, h] each
                    sc["last/whiten"] = cosine(*whiten(B, last, ref, SHRINK))
                    sc["after/whiten"] = cosine(*whiten(B, after, ref, SHRINK))
                    sc["peaks4+last/whiten"] = sc["peaks4"] + zf(sc["last/whiten"])
                    sc["peaks4+after/whiten"] = sc["peaks4"] + zf(sc["after/whiten"])
                    sc["peaks4+0.5 last/whiten"] = sc["peaks4"] + 0.5 * zf(sc["last/whiten"])
                    sc["peaks4+sub8max"] = sc["peaks4"] + zf(sc["sub8max/diag0.6"])
                fact_blocks = sorted({t // block for t in fact})
                for name, s in sc.items():
                    keep = torch.full_like(s, float("-inf"))
                    keep[folded] = s[folded]
                    order = keep.argsort(descending=True).tolist()[:len(folded)]
                    rank = min(order.index(j) for j in fact_blocks if j in folded) + 1
                    for budget in budgets:
                        got = picks(order, block, pad, budget, T, sink)
                        rows.setdefault((name, qd["form"], budget), []).append((rank, all(t in got for t in fact)))
                if "units" in ep:   # round 25: the shipped picks (`latent.pick`) of blocks, and of whole sentences
                    spans = ep["units"]                                                  # [n, 2]
                    fold_b = torch.zeros(B.shape[0], dtype=torch.bool)
                    fold_b[folded] = True
                    ranked = {"peaks4/pick": (sc["peaks4"].masked_fill(~fold_b, float("-inf")), None, shipped_pad),
                              "units/peaks4": (score_units(unit(H[:, -1], dim=-1), 0, spans, Q[-1], B[:, -1], SHRINK,
                                                           4).masked_fill(~(within(spans, fold_b, block)
                                                                            & (spans[:, 0] >= sink)), float("-inf")),
                                               spans, 0)}
                    for name, (s, edges, p) in ranked.items():
                        first = s.argsort(descending=True)                               # [n]
                        first = first[torch.isfinite(s[first])]                          # [n'] candidates, best first
                        lo_hi = (torch.stack([first * block, (first + 1) * block], 1) if edges is None
                                 else edges[first])                                      # [n', 2]
                        holds = (lo_hi[:, 0] <= max(fact)) & (lo_hi[:, 1] > min(fact))   # [n'] a token of the fact
                        rank = int(holds.float().argmax()) + 1 if holds.any() else len(first)
                        for budget in budgets:
                            got = {t for lo, hi in pick(s, block, p, budget, T, sink, edges) for t in range(lo, hi)}
                            rows.setdefault((name, qd["form"], budget), []).append((rank, all(t in got for t in fact)))
    summary = [dict(ranker=name, form=form, questions=len(rs), median_rank=statistics.median(r for r, _ in rs),
                    **{"hits@8": sum(r <= 8 for r, _ in rs)}, budget=budget,
                    available=sum(a for _, a in rs) / len(rs))
               for (name, form, budget), rs in sorted(rows.items(), key=lambda kv: (-kv[0][2], kv[0][1], kv[0][0]))]
    return dict(config=dict(folders=folders, budget=list(budgets), pad=pad, block=block), summary=summary)


def store_bytes(store) -> int:
    """Bytes of a KVStore: keys and values of every layer, beta and the per-slot positions, origins, importance."""
    extra = [getattr(store, name, None) for name in ("key_pos", "origin", "importance")]
    return store.kv_bytes() + sum(t.numel() * t.element_size() for t in extra if t is not None)


def run(args: argparse.Namespace) -> dict:
    import briefing
    import briefing.attention
    import briefing.context
    import briefing.kv
    from agents.recall import _words, bm25_chunks
    from agents.workers.prompt import WorkerPrompt
    from benchmarks.rlm_bench.long_episodes import SPLIT_SEED, make_long_episode, question_event, question_text
    from briefing.archive import decoder_layers, hidden_states

    torch.set_num_threads(args.threads)
    lm = briefing.load_model(args.model)
    prompts = WorkerPrompt.for_model(lm)
    n_layers = len(decoder_layers(lm))
    from agents.recall import LatentRecall, default_recall_tokens, fold_room, sentence_units
    from briefing import latent

    if args.case == "dense":   # issue 29's shape: a 2,048-token cache budget, a recall of an eighth of it
        budget, reserve, recall_budget = args.budget, 256, args.budget // 8
        budgets = (recall_budget, 2 * recall_budget)
    else:
        reserve = max(64, args.window // 16)
        share = args.window - reserve   # the recall comes out of a cache with the default fold
        recall_budget = default_recall_tokens(share, fold_room(share, reserve, briefing.FoldPolicy().sink))
        budget = args.window - reserve - recall_budget
        budgets = (recall_budget, 960)
    policy = briefing.ArchivePolicy()
    shipped = LatentRecall(units="blocks")
    rows: list[dict] = []
    sizes: list[dict] = []
    attn = [blk.self_attn for blk in decoder_layers(lm)]
    d = (lm.config.head_dim if getattr(lm.config, "head_dim", None)
         else lm.config.hidden_size // lm.config.num_attention_heads)
    for e in range(args.episodes):
        seed = SPLIT_SEED[args.split] + e
        if args.case == "dense":
            ep = make_dense_case(seed, args.tokens, split=args.split)
            traj = ep.text + "[orchestrator]\nAll sections read. I ask the worker.\n\n"
        else:
            ep = make_long_episode(seed, args.tokens, split=args.split)
            traj = ep.text + "".join(question_event(q, i) for i, q in enumerate(ep.questions))
        text = prompts.cache_text(traj)
        # no importance scoring (it changes no fold at the default selector and costs a second prefill); its bytes
        # are counted below as the store would hold them
        cache = briefing.TrajectoryCache(lm, budget=budget, reserve=reserve + recall_budget, archive=policy,
                                         importance=False)
        hid: list[torch.Tensor] = []
        hid3: list[torch.Tensor] = []
        keys: list[torch.Tensor] = []
        kept_k: dict[int, torch.Tensor] = {}

        def key_hook(i: int):
            def hook(module, a, output):
                kept_k[i] = output.detach()
            return hook

        handles = [attn[i].k_proj.register_forward_hook(key_hook(i)) for i in range(n_layers)]
        t0 = time.perf_counter()
        try:
            with hidden_states(lm, list(range(n_layers))) as hs:
                orig = briefing.context.run_model

                def spy(*a, **k):
                    out = orig(*a, **k)
                    hid.append(torch.stack([hs[i][0] for i in range(n_layers)], 1).bfloat16())  # [n, L, hidden]
                    if args.dump:   # float32 (Gemma 3's hidden states pass float16's range; bfloat16 above)
                        hid3.append(torch.stack([hs[i][0] for i in layer_ids("last3", n_layers)], 1).float())
                    keys.append(torch.stack([kept_k[i][0] for i in range(n_layers)], 1).bfloat16())  # [n, L, kvh*d]
                    return out

                import briefing.trajectory as tr
                tr.run_model = spy
                try:
                    cache.extend(text)
                finally:
                    tr.run_model = orig
        finally:
            for h in handles:
                h.remove()
        prefill_s = time.perf_counter() - t0
        H = torch.cat(hid).float()                                                # [T, L, hidden]
        Kp = torch.cat(keys).float()                                              # [T, L, kvh*d]
        T = H.shape[0]
        assert T == cache.tokens, (T, cache.tokens)
        offsets = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        head = len(prompts.cache_text(""))
        sink = cache.fold.sink
        arc = cache.archive
        sizes.append(dict(episode=ep.id, tokens=T, cache_positions=cache.length,
                          cache_bytes_per_token=store_bytes(cache.store) / T,
                          importance_bytes_per_token=(4 * len(cache.store.held) * cache.store.kv_heads
                                                      * cache.length / T),
                          archive_bytes_per_token=arc.nbytes() / T,
                          representative_bytes_per_token=arc.representative_bytes() / T,
                          archived_tokens=arc.archived[1] - arc.archived[0], prefill_s=prefill_s))
        held = cache.origins()                                                   # [Lh, H, length] token per slot
        dumped: dict[str, Any] = dict(H=torch.cat(hid3) if hid3 else None, T=T, sink=sink, questions=[],
                                      units=sentence_units(cache, latent.UNIT_TOKENS).cpu())
        tail = arc.unfolded_from(cache.store)                                    # held whole from here on
        for qi, q in enumerate(ep.questions):
            st = text.index(q.statement)
            fact = statement_tokens(offsets, st, st + len(q.statement))
            if min(fact) >= tail:   # wholly in the cache's unfolded tail: in view, nothing to recall
                continue
            prompt = prompts.call_prompt(question_text(q))
            ids = lm.encode(prompt)
            p_off = lm.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            qs = prompt.index(question_text(q))
            q_tok = statement_tokens(p_off, qs, qs + len(question_text(q)))
            in_cache = float(torch.isin(held, torch.tensor(fact, device=held.device)).sum(-1).float().mean()
                             / len(fact))                                        # share of the fact's tokens kept
            t1 = time.perf_counter()
            found = latent.lookup(cache, ids, (q_tok[0], q_tok[-1] + 1), recall_budget, pad=shipped.pad, sink=sink,
                                  peaks=shipped.peaks)
            lookup_s = time.perf_counter() - t1
            shipped_scores = {"shipped/latent": found.scores.cpu(),
                              "shipped/both": LatentRecall(rank="both", units="blocks")._fused(cache, question_text(q),
                                                                               found.scores).cpu()}
            qproj: dict[int, torch.Tensor] = {}

            def q_hook(i: int):
                def hook(module, a, output):
                    qproj[i] = output.detach()
                return hook

            reps: dict[str, torch.Tensor] = {}
            qkeys: dict[str, torch.Tensor] = {}
            for how in ("prompt", "alone"):
                hq = [attn[i].q_proj.register_forward_hook(q_hook(i)) for i in range(n_layers)]
                try:
                    with hidden_states(lm, list(range(n_layers))) as hs:
                        if how == "prompt":
                            before = briefing.kv.marks(cache.store.kv)
                            state = briefing.attention.BiasState(beta=cache.store.attention_bias())
                            try:
                                briefing.context.run_model(lm, cache.store.kv, ids, cache.position, state,
                                                           logits=False)
                            finally:
                                briefing.kv.rollback(cache.store.kv, before)
                            hq_all = torch.stack([hs[i][0] for i in range(n_layers)], 1)   # [n, L, hidden]
                            reps["prompt"] = hq_all[q_tok].mean(0)
                            hq_last = hq_all[q_tok].float()                                   # [m, L, hidden]
                            reps["prompt-all"] = hq_all.mean(0)
                            qkeys["prompt"] = torch.stack([qproj[i][0][q_tok] for i in range(n_layers)], 1)
                        else:
                            q_ids = lm.encode(question_text(q))
                            briefing.context.run_model(lm, lm.new_cache(), q_ids, 0, None, logits=False)
                            reps["alone"] = torch.stack([hs[i][0] for i in range(n_layers)], 1).mean(0)
                finally:
                    for h in hq:
                        h.remove()
            for block in args.blocks:
                nb = math.ceil(T / block)
                cand = [j for j in range(nb) if (j + 1) * block > sink]
                Hs = block_means(H, block)                                                  # [nb, L, h]
                Ks = block_means(Kp, block)                                                 # [nb, L, kvh*d]
                fact_blocks = sorted({t // block for t in fact})
                folded = [j for j in cand if j * block < tail]   # what latent recall can bring back
                scores: dict[str, torch.Tensor] = {}
                for qsrc in ("prompt", "prompt-all", "alone"):
                    for ls in LAYER_SETS:
                        li = layer_ids(ls, n_layers)
                        for norm in ("raw", "centred", "standardised"):
                            B_ = Hs[:, li]                                                       # [nb, l, h]
                            Q_ = reps[qsrc][li]                                                  # [l, h]
                            if norm != "raw":
                                mu = B_[cand].mean(0)                                            # [l, h]
                                sd = B_[cand].std(0).clamp_min(1e-6) if norm == "standardised" else 1.0
                                B_, Q_ = (B_ - mu) / sd, (Q_ - mu) / sd
                            s = torch.nn.functional.cosine_similarity(B_, Q_[None], dim=-1).mean(-1)  # [nb]
                            scores[f"hidden/{qsrc}/{ls}/{norm}"] = s
                if block == policy.block and args.dump:
                    dumped["questions"].append(dict(form=q.form, fact=fact, cand=cand, folded=folded,
                                                    q=hq_last[:, layer_ids("last3", n_layers)],
                                                    prompt=hq_all[:, layer_ids("last3", n_layers)].float(),
                                                    span=(q_tok[0], q_tok[-1] + 1),
                                                    shipped=shipped_scores["shipped/latent"]))
                # key summaries: pre-RoPE queries of the question tokens against block mean keys
                kvh = lm.kv_heads
                g = lm.group
                for ls in ("last6", "mid3", "all"):
                    li = list(range(n_layers)) if ls == "all" else layer_ids(ls, n_layers)
                    qk = qkeys["prompt"][:, li].reshape(len(q_tok), len(li), kvh, g, d)          # [m, l, kvh, g, d]
                    kb = Ks[:, li].reshape(nb, len(li), kvh, d)                                 # [nb, l, kvh, d]
                    s = torch.einsum("mlhgd,blhd->bmlhg", qk, kb) / math.sqrt(d)
                    scores[f"keys/prompt/{ls}/mean"] = s.mean(dim=(1, 2, 3, 4))
                    scores[f"keys/prompt/{ls}/max"] = s.amax(dim=(1, 3, 4)).mean(-1)
                from rank_bm25 import BM25Okapi
                texts = [lm.decode(cache.ids[j * block:(j + 1) * block]) for j in range(nb)]
                bm = BM25Okapi([_words(t) or ["_"] for t in texts]).get_scores(_words(question_text(q)))
                scores["bm25/blocks"] = torch.tensor(bm, dtype=torch.float32)
                if block == policy.block:
                    for name, sc in shipped_scores.items():
                        scores[name] = sc[:nb] if sc.shape[0] >= nb else torch.cat(
                            [sc, torch.full((nb - sc.shape[0],), float("-inf"))])
                for name, s in scores.items():
                    s = s.clone()
                    keep = torch.full((nb,), float("-inf"))
                    keep[folded] = s[folded]
                    order = keep.argsort(descending=True).tolist()[:len(folded)]
                    rank = min(order.index(j) for j in fact_blocks if j in folded) + 1
                    row = dict(episode=ep.id, seed=seed, question=qi, form=q.form, fact=q.fact, quarter=q.quarter,
                               block=block, ranker=name, rank=rank, blocks=len(folded), in_cache=in_cache)
                    for r in budgets:
                        for pad in sorted({0, 8, block // 2}):
                            got = picks(order, block, pad, r, T, sink)
                            row[f"avail_{r}_pad{pad}"] = all(t in got for t in fact)
                    if name.startswith("shipped/"):   # what LatentRecall would bring back (latent.pick, its pad)
                        row["lookup_s"] = lookup_s
                        for r in budgets:
                            got = {t for lo, hi in latent.pick(s, block, shipped.pad, r, T, sink)
                                   for t in range(lo, hi)}
                            row[f"avail_{r}_shipped"] = all(t in got for t in fact)
                    rows.append(row)
            # TextRecall's chunks over the whole text (BriefedWorker's default), at the same budgets
            for r in budgets:
                found = bm25_chunks(traj, question_text(q), r, lm, chunk_words=max(8, min(60, r // 3)), ranked=True)
                s0 = st - head
                rows.append(dict(episode=ep.id, seed=seed, question=qi, form=q.form, fact=q.fact, quarter=q.quarter,
                                 block=0, ranker=f"text-bm25/{r}", rank=0, blocks=0, in_cache=in_cache,
                                 **{f"avail_{r}_pad0": any(a <= s0 and s0 + len(q.statement) <= b
                                                          for a, b in found.ranges)}))
        if args.dump:
            Path(args.dump).mkdir(parents=True, exist_ok=True)
            torch.save(dumped, Path(args.dump) / f"{ep.id}.pt")
        print(f"episode {e}: {T} tokens, {len(cache.folds)} folds, prefill {prefill_s:.1f} s", flush=True)
    return dict(config=dict(case=args.case, episodes=args.episodes, tokens=args.tokens, window=args.window,
                            split=args.split, model=lm.name, recall_budget=recall_budget, cache_budget=budget,
                            reserve=reserve, blocks=args.blocks, archive=vars(policy), recall_pad=shipped.pad),
                sizes=sizes, size_mean={k: statistics.mean(d[k] for d in sizes) for k in sizes[0] if k != "episode"},
                rows=rows, summary=summarize(rows))


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["ranker"], r["block"]) for r in rows})
    for ranker, block in keys:
        for form in ("own", "paraphrase"):
            rs = [r for r in rows if r["ranker"] == ranker and r["block"] == block and r["form"] == form]
            if not rs:
                continue
            entry: dict[str, Any] = dict(ranker=ranker, block=block, form=form, questions=len(rs))
            entry["in_cache"] = statistics.mean(r["in_cache"] for r in rs)
            if rs[0]["blocks"]:
                entry["median_rank"] = statistics.median(r["rank"] for r in rs)
                for k in (1, 4, 8):
                    entry[f"hits@{k}"] = sum(r["rank"] <= k for r in rs)
                entry["top8"] = entry["hits@8"] / len(rs)
            if "lookup_s" in rs[0]:
                entry["lookup_s"] = statistics.mean(r["lookup_s"] for r in rs)
            for k in rs[0]:
                if k.startswith("avail_"):
                    entry[k] = sum(bool(r[k]) for r in rs if k in r) / len(rs)
            out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recall_rank", description=__doc__.split("\n")[0])
    p.add_argument("--case", default="long", choices=["long", "dense"])
    p.add_argument("--budget", type=int, default=2048, help="cache budget of the dense case")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--split", default="dev", choices=["dev", "heldout"])
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None)
    p.add_argument("--dump", default=None, help="also save each episode's last-three-layer hidden states and its "
                   "questions under this folder, for --offline")
    p.add_argument("--offline", nargs="+", default=None, metavar="DUMP",
                   help="rank the questions of these --dump folders with the whitening candidates (`offline`) instead "
                   "of running the model")
    p.add_argument("--offline-budgets", type=int, nargs="+", default=[960], metavar="TOKENS",
                   help="--offline: the recall budgets the fact must be held whole within")
    p.add_argument("--out", default="bench_out/recall_rank")
    args = p.parse_args(argv)
    if args.offline:
        if min(args.offline_budgets) < 1:
            p.error(f"--offline-budgets: {min(args.offline_budgets)} is not a token budget; give positive numbers")
        for folder in args.offline:
            if not list(Path(folder).glob("*.pt")):
                p.error(f"--offline: {folder} holds no episode (*.pt); make one with --dump")
        result = offline(args.offline, budgets=tuple(args.offline_budgets))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "offline.json").write_text(json.dumps(result, indent=1))
        for s in result["summary"]:
            print(f"{s['ranker']:16s} {s['form']:10s} n={s['questions']:3d} median rank {s['median_rank']:6.1f} "
                  f"top 8 {s['hits@8']:3d} held at {s['budget']} tokens {s['available']:.2f}")
        return 0
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "summary.json").write_text(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    for s in result["summary"]:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
