"""Distributes the episodes of a suite (the family suite, the long suite): serially, over a local process pool, or
over Ray (`--ray auto|ADDRESS|local`).

Every episode is rebuilt from its `EpisodeSpec` where it runs (the worker's own tokenizer sizes it) and
scored with torch on one thread, so rows are identical whichever way they ran (timings aside). Progress is
a tqdm bar: episodes done, elapsed and time left.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol


TIMING_KEYS = ("prefill_s", "importance_s", "overhead_s", "generate_s", "latency_s", "text_cold_s", "compaction",
               "summary_s", "generated", "gen_match")  # vary from run to run; everything else is deterministic

_STATE: dict[str, Any] = {}


def _load(model: str | None) -> tuple[Any, Any]:
    if _STATE.get("model_key") != (model,):
        import torch

        import briefing
        from agents.workers.prompt import WorkerPrompt

        torch.set_num_threads(1)
        lm = briefing.load_model(model)
        _STATE.update(model_key=(model,), lm=lm, prompts=WorkerPrompt.for_model(lm))
    return _STATE["lm"], _STATE["prompts"]


class Suite(Protocol):
    """What the runner runs: a suite's settings, which turn one episode's spec into (episode record, rows)."""

    def run(self, lm: Any, prompts: Any, spec: Any) -> tuple[dict, list[dict]]: ...


def run_episode(spec: Any, cfg: Suite, model: str | None = None, lm: Any = None) -> tuple[dict, list[dict]]:
    """(episode record, rows) of one episode; loads the model once per process unless `lm` is given."""
    from agents.workers.prompt import WorkerPrompt

    if lm is None:
        lm, prompts = _load(model)
    else:
        prompts = WorkerPrompt.for_model(lm)
    t0 = time.perf_counter()
    record, rows = cfg.run(lm, prompts, spec)
    return record | {"wall_s": time.perf_counter() - t0}, rows


def _pool_init(parent: int | None = None) -> None:
    """A pool worker: one thread, and it exits when `parent` (the process that made the pool) is gone, so a killed run
    leaves no worker holding a model and its memory."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if parent is not None:
        import threading

        threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()


def _exit_with(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="episode", desc="rlm bench", disable=not enabled, dynamic_ncols=True)


def _key(spec: Any, cfg: Suite) -> str:
    return json.dumps([asdict(spec), asdict(cfg)], sort_keys=True, default=str)


def run_all(specs: list[Any], cfg: Suite, *, model: str | None = None, lm: Any = None, workers: int = 1,
            ray: str | None = None, progress: bool = True, log: Callable[[str], None] = print,
            checkpoint: Path | None = None) -> list[tuple[dict, list[dict]]]:
    """Results in the order of `specs`. workers <= 1 and no ray: serial in this process (with `lm` if given).

    checkpoint: a JSONL file; every finished episode is appended to it, and episodes already in it (same spec
    and settings) are not run again, so an interrupted run resumes where it stopped."""
    results: list[Any] = [None] * len(specs)
    saved: dict[str, Any] = {}
    if checkpoint is not None and checkpoint.is_file():
        for line in checkpoint.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                saved[rec["key"]] = (rec["episode"], rec["rows"])
    keys = [_key(s, cfg) for s in specs]
    for i, k in enumerate(keys):
        if k in saved:
            results[i] = saved[k]
    todo = [i for i in range(len(specs)) if results[i] is None]
    if saved:
        log(f"resuming: {len(specs) - len(todo)} of {len(specs)} episodes already in {checkpoint}")
    bar = _progress(len(todo), progress)

    def done(j: int, res: tuple[dict, list[dict]]) -> None:
        i = todo[j]
        results[i] = res
        if checkpoint is not None:
            with checkpoint.open("a") as f:
                f.write(json.dumps({"key": keys[i], "episode": res[0], "rows": res[1]}, default=str) + "\n")
        bar.update(1)
        summ, rows = res
        right = sum(bool(r["correct"]) for r in rows)
        bar.set_postfix_str(f"{summ['id']}: {right}/{len(rows)} right", refresh=False)

    try:
        pending = [specs[i] for i in todo]
        if ray:
            _run_ray(pending, cfg, model, workers, ray, done)
        elif workers <= 1:
            for j, s in enumerate(pending):
                done(j, run_episode(s, cfg, model, lm))
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                     initializer=_pool_init, initargs=(os.getpid(),)) as ex:
                futs = {ex.submit(run_episode, s, cfg, model): j for j, s in enumerate(pending)}
                for f in as_completed(futs):
                    done(futs[f], f.result())
    finally:
        bar.close()
    return results


def _run_ray(specs: list[Any], cfg: Suite, model: str | None, workers: int, address: str,
             done: Callable[[int, Any], None]) -> None:
    try:
        import ray
    except ImportError as e:  # the optional extra
        raise SystemExit("--ray needs Ray: pip install 'latent-briefing[ray]'") from e
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(run_episode)
        pending = {task.remote(s, cfg, model): i for i, s in enumerate(specs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def comparable(rows: Iterable[dict]) -> list[dict]:
    """Rows without the fields that vary between runs (timings), for checking runs against each other."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
