"""The GPU benchmark, ready before a GPU is: 8B-shaped random-weight workers built directly on the device, in bf16.

    python -m benchmarks.gpu_bench                       # make bench-gpu: Llama-3.1-8B and Qwen3-8B shapes, 4k-32k
    python -m benchmarks.gpu_bench --shape small         # the same on tiny shapes, on the CPU (what the tests run)
    python -m benchmarks.gpu_bench --report DIR/gpu_bench.json   # the table again from the JSON

Nothing is downloaded: the models are built from the Llama-3.1-8B and Qwen3-8B configurations (their published
sizes, written here) with random weights, and text is bytes (one token each) through a byte-level tokenizer made in
memory. Random weights give attention patterns unlike a trained model's, so this measures cost, not quality.

At each trajectory length it measures, every timing synchronised with the device and the minimum of `--repeats`:
- prefill: the whole trajectory into a `briefing.TrajectoryCache` (no folding);
- compaction at 50/20/10/5% kept: the call prompt's scoring pass, the selection and the fit (beta and values),
  `AttentionMatching(ratio=r)`, with the time split into scoring and fit;
- a briefed call (the shipped default, `AttentionMatching(tau=1.0)`: compaction, then `--decode` tokens) against a
  prefix-cached text call (`KeepAll` on the same cache: the call prompt forwarded over the full cache, then the same
  tokens), the decode run through end-of-sequence tokens so both generate the same count;
- KV bytes of the full cache and of the compacted context.
Targets on an H200: compaction at 32k under 1.7 s (the seed write-up's median), a briefed call at 32k at most 0.5x the
prefix-cached text call. Writes gpu_bench.json and gpu_bench.md (the table).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import string
import sys
import time
from pathlib import Path
from typing import Any

import torch

SHAPES = {
    "llama-3.1-8b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "qwen3-8b": ("Qwen3Config", dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
}
SMALL = {name: (cls, dict(cfg, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096))
         for name, (cls, cfg) in SHAPES.items()}
RATIOS = (0.5, 0.2, 0.1, 0.05)
PROMPT = " Question: according to the trajectory above, what did the orchestrator find in the third file? Answer:"


def byte_tokenizer():
    """A byte-level tokenizer with no merges (one token per byte), made in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def build(shape: str, small: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A random-weight model of `shape`, made directly on `device` in `dtype` (no copy through the CPU)."""
    import transformers
    from transformers import AutoModelForCausalLM

    import briefing

    cls, cfg = (SMALL if small else SHAPES)[shape]
    config = getattr(transformers, cls)(**cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return briefing.LoadedModel(model=model, tokenizer=byte_tokenizer(), name=f"{shape} (random weights)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, Any]:
    """Minimum wall time of `repeats` calls of fn(), the device synchronised around each; and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def trajectory(tokens: int, seed: int = 0) -> str:
    """`tokens` bytes of words (one token each through the byte tokenizer)."""
    rng = random.Random(seed)
    words = []
    while sum(len(w) + 1 for w in words) < tokens:
        words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))))
    return " ".join(words)[:tokens]


def measure(lm: Any, tokens: int, repeats: int, decode: int) -> dict:
    import briefing

    device = lm.device
    text = trajectory(tokens)
    prefill_s, cache = timed(lambda: briefing.TrajectoryCache(lm, text, chunk_tokens=4096, fold=None), device, 1)
    row: dict[str, Any] = dict(tokens=cache.tokens, prefill_s=prefill_s, full_kv_bytes=cache.kv_bytes())
    for r in RATIOS:
        t, ctx = timed(lambda r=r: cache.compact(PROMPT, briefing.AttentionMatching(ratio=r)), device, repeats)
        st = ctx.stats
        row[f"compaction_{r:g}"] = dict(total_s=t, score_s=st.time_score_s, fit_s=st.time_beta_s + st.time_values_s,
                                        kept=st.kept, kept_kv_bytes=briefing_kv_bytes(ctx))
    gen = briefing.GenerationConfig(max_new_tokens=decode, ignore_eos=True)

    def call(selector):
        ctx = cache.compact(PROMPT, selector)
        return ctx, briefing.generate(ctx, gen)

    row["briefed_call_s"], (ctx, _) = timed(lambda: call(briefing.AttentionMatching(tau=1.0)), device, repeats)
    row["briefed_kept"], row["briefed_kv_bytes"] = ctx.stats.kept, briefing_kv_bytes(ctx)
    row["text_call_s"], _ = timed(lambda: call(briefing.KeepAll()), device, repeats)
    row["briefed_over_text"] = row["briefed_call_s"] / row["text_call_s"]
    return row


def briefing_kv_bytes(ctx: Any) -> int:
    """Bytes of a compacted context's keys and values, without its prompt."""
    n = len(ctx.prompt_ids)
    return sum((layer.keys.shape[-2] - n) * layer.keys.shape[-1] * layer.keys.shape[1] * layer.keys.element_size() * 2
               for layer in ctx.kv.layers)


def markdown(result: dict) -> str:
    lines = [f"GPU benchmark on {result['device_name']} ({result['dtype']}, {result['shape']} shapes, random weights, "
             f"min of {result['repeats']}; decode {result['decode']} tokens). Regenerate: `{result['command']}`.", "",
             "| model | tokens | prefill s | compaction s at 50 / 20 / 10 / 5% kept (fit s at 10%) | briefed call s "
             "| prefix-cached text call s | briefed / text | KV MB full / briefed |",
             "|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        for r in m["rows"]:
            comp = " / ".join(f"{r[f'compaction_{x:g}']['total_s']:.3f}" for x in RATIOS)
            lines.append(f"| {m['model']} | {r['tokens']:,} | {r['prefill_s']:.2f} | {comp} "
                         f"({r['compaction_0.1']['fit_s']:.3f}) | {r['briefed_call_s']:.3f} | {r['text_call_s']:.3f} "
                         f"| {r['briefed_over_text']:.2f}x | {r['full_kv_bytes'] / 2**20:.1f} / "
                         f"{r['briefed_kv_bytes'] / 2**20:.1f} |")
    lines += ["", "Targets (H200): compaction at 32k under 1.7 s; briefed call at 32k at most 0.5x the text call."]
    for m in result["models"]:
        at = [r for r in m["rows"] if r["tokens"] >= 32768]
        if at:
            r = at[0]
            lines.append(f"- {m['model']}: compaction at {r['tokens']:,} (10% kept) "
                         f"{r['compaction_0.1']['total_s']:.2f} s; "
                         f"briefed / text {r['briefed_over_text']:.2f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["8b", "small"], default="8b")
    p.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="default: 4096 8192 16384 32768 (small: 256 512)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode", type=int, default=32, help="tokens each call generates")
    p.add_argument("--out", default="bench_out/gpu")
    p.add_argument("--report", metavar="JSON", help="only print the table of a gpu_bench.json")
    args = p.parse_args(argv)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())), end="")
        return 0
    from briefing.model import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    small = args.shape == "small"
    lengths = args.lengths or ([256, 512] if small else [4096, 8192, 16384, 32768])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, " \
                                                                            f"{os.cpu_count()} cores)"
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.gpu_bench", *given])
    result: dict[str, Any] = dict(device=str(device), device_name=name, dtype=str(dtype).removeprefix("torch."),
                                  shape=args.shape, repeats=args.repeats, decode=args.decode, command=command,
                                  torch=torch.__version__, models=[])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for shape in args.models:
        lm = build(shape, small, device, dtype)
        rows = []
        for n in lengths:
            rows.append(measure(lm, n, args.repeats, args.decode))
            print(f"{shape} {n}: prefill {rows[-1]['prefill_s']:.2f}s, compaction at 10% "
                  f"{rows[-1]['compaction_0.1']['total_s']:.3f}s, briefed/text {rows[-1]['briefed_over_text']:.2f}x",
                  flush=True)
        result["models"].append(dict(model=shape, layers=lm.num_layers, kv_heads=lm.kv_heads, rows=rows))
        del lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
        (out / "gpu_bench.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_bench.md").write_text(markdown(result))
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
