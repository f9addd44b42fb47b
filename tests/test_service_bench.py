"""The service benchmark end to end on a tiny random model (two Ray starts: marked slow)."""
from __future__ import annotations

import json

import pytest

from tests.test_service import free_port, serve_missing


@pytest.mark.slow
@pytest.mark.skipif(bool(serve_missing), reason=serve_missing or "")
def test_service_bench_runs_on_a_tiny_model(tmp_path, capsys):
    from benchmarks import service_bench

    assert service_bench.main(["--model", "tiny", "--runs", "3", "--calls", "3", "--part", "80", "--kill-runs", "2",
                               "--kill-after", "2", "--port", str(free_port()), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "service_bench.json").read_text())
    for phase in ("inprocess", "service", "kill"):
        r = result[phase]
        assert r["answered"] == r["calls"] and r["lost"] == 0 and r["crossed"] == 0 and r["final"] == r["runs"]
    s = result["service"]
    assert s["identical"] == s["answered"] == 9 and max(s["peak_bytes"].values()) <= s["budget_bytes"]
    assert result["kill"]["killed_after_calls"] >= 2 and result["startup"]["http"]["http_s"] is not None
    assert (tmp_path / "service_bench.png").is_file()
    assert "| service | 9 / 9 | 0 | 0 | 9 / 9 |" in capsys.readouterr().out
