"""The GPU benchmark on its small shapes, on the CPU: every figure it reports is there and consistent."""
from __future__ import annotations

import json

from benchmarks import gpu_bench


def test_gpu_bench_small_shape_runs_on_the_cpu(tmp_path, capsys):
    assert gpu_bench.main(["--shape", "small", "--lengths", "160", "--repeats", "1", "--decode", "3", "--device",
                           "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["shape"] == "small"
    assert [m["model"] for m in result["models"]] == ["llama-3.1-8b", "qwen3-8b"]
    for m in result["models"]:
        (row,) = m["rows"]
        assert row["tokens"] == 160 and row["prefill_s"] > 0 and row["text_call_s"] > 0
        kept = [row[f"compaction_{r:g}"]["kept"] for r in gpu_bench.RATIOS]
        assert kept == sorted(kept, reverse=True) and kept[0] == 80   # 50% of 160
        assert row["compaction_0.5"]["kept_kv_bytes"] * 2 == row["full_kv_bytes"]
        assert row["briefed_over_text"] == row["briefed_call_s"] / row["text_call_s"]
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "| llama-3.1-8b | 160 |" in table and "--shape small" in table
    assert gpu_bench.main(["--report", str(tmp_path / "gpu_bench.json")]) == 0
    assert "| qwen3-8b | 160 |" in capsys.readouterr().out


def test_the_8b_shapes_are_the_published_ones():
    llama, qwen = gpu_bench.SHAPES["llama-3.1-8b"][1], gpu_bench.SHAPES["qwen3-8b"][1]
    assert (llama["num_hidden_layers"], llama["num_key_value_heads"], llama["hidden_size"]) == (32, 8, 4096)
    assert (qwen["num_hidden_layers"], qwen["num_key_value_heads"], qwen["head_dim"]) == (36, 8, 128)
