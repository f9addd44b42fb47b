"""The benchmark tables of docs/benchmarks.md are what their commands write from the committed JSON: no figure is
typed by hand, and each block names the command that regenerates it. (The rlm-bench block: tests/test_bench_stats.py;
the selection and kvpress rows: tests/test_coverage.py.)"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

import briefing

from benchmarks import readme

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BLOCKS = {  # every marked block of docs/benchmarks.md: (start, end) markers
    "briefing-anchor": ("<!-- briefing-anchor -->", "<!-- /briefing-anchor -->"),
    "briefing-lengths": ("<!-- briefing-lengths -->", "<!-- /briefing-lengths -->"),
    "rlm-bench": ("<!-- rlm-bench:begin -->", "<!-- rlm-bench:end -->"),
    "long-suite": ("<!-- long-suite:start -->", "<!-- long-suite:end -->"),
    "long-suite-w1024": ("<!-- long-suite-w1024:start -->", "<!-- long-suite-w1024:end -->"),
    "long-suite-w1024-x8": ("<!-- long-suite-w1024-x8:start -->", "<!-- long-suite-w1024-x8:end -->"),
    "selection-tables": ("<!-- selection-tables -->", "<!-- /selection-tables -->"),
    "kvpress-tables": ("<!-- kvpress-tables -->", "<!-- /kvpress-tables -->"),
    "concurrency-bench": ("<!-- concurrency-bench -->", "<!-- /concurrency-bench -->"),
    "service-bench": ("<!-- service-bench -->", "<!-- /service-bench -->"),
    "fit-probe": ("<!-- fit-probe -->", "<!-- /fit-probe -->"),
    "compact-time": ("<!-- compact-time -->", "<!-- /compact-time -->"),
}


def block(name: str, text: str | None = None) -> str:
    start, end = BLOCKS[name]
    text = DOC.read_text() if text is None else text
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_the_writers_write_docs_benchmarks_and_the_readme_has_no_block():
    assert readme.DOC == DOC and DOC.is_file()
    doc, top = DOC.read_text(), (ROOT / "README.md").read_text()
    for name, (start, end) in BLOCKS.items():
        assert doc.count(start) == 1 and doc.count(end) == 1 and doc.index(start) < doc.index(end), name
        assert start not in top and end not in top, f"README.md still has the {name} block"


def test_briefing_blocks_are_generated_from_the_committed_json():
    from benchmarks.briefing_bench import readme_tables

    result = json.loads((ROOT / "docs" / "results" / "briefing" / "briefing_bench.json").read_text())
    command = "python -m benchmarks.briefing_bench --report docs/results/briefing/briefing_bench.json"
    for name, text in readme_tables(result).items():
        assert block(name) == text.strip(), f"docs/benchmarks.md block {name} is stale: run `{command}`"


def test_fit_probe_block_is_generated_from_the_committed_json():
    from benchmarks.fit_probe import table

    results = json.loads((ROOT / "docs" / "results" / "fit_probe" / "fit_probe.json").read_text())
    assert block("fit-probe") == table(results).strip() == (ROOT / "docs" / "results" / "fit_probe" /
                                                            "fit_probe.md").read_text().strip()


def test_compact_time_block_is_generated_from_the_committed_json(capsys):
    """The compaction-time and importance-cost table is `benchmarks.compact_time --report` of the committed run (the
    median build of several, with their range); a run from before `--extends` (one build) still reads."""
    from benchmarks.compact_time import main, table

    path = ROOT / "docs" / "results" / "importance_split" / "compact_time.json"
    results = json.loads(path.read_text())
    assert all(len(row["extends"]) > 1 for row in results["lengths"])
    assert block("compact-time") == table(results).strip() == path.with_suffix(".md").read_text().strip()
    assert "the median of" in block("compact-time")
    assert main(["--report", str(path)]) == 0 and capsys.readouterr().out.strip() == table(results).strip()
    old = json.loads((ROOT / "docs" / "results" / "selection_chunk512" / "compact_time_default512.json").read_text())
    assert "1.18x the prefill's 6.6 s; 7,900 tokens" in table(old) and "builds" not in table(old)
    for bad, says in ((["--extends", "0"], "--extends 0: give a positive number of builds"),
                      (["--repeats", "0"], "--repeats 0: give a positive number"),
                      (["--ratio", "1.5"], "--ratio 1.5: give the share"),
                      (["--readme"], "--readme: give --out too"),
                      (["--report", str(path), "--out", "x.json"], "--out: --report writes no JSON"),
                      (["--report", "missing.json"], "--report missing.json: not a readable compact_time JSON")):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_compact_time_builds_the_cache_several_times_and_reports_the_median_build(tiny, monkeypatch):
    """`--extends N`: N builds of the scored cache, each one's times kept, the row's prefill and importance those of
    the build with the median ratio; the selectors' figures come from one cache."""
    from benchmarks import compact_time

    monkeypatch.setattr(compact_time, "selectors", lambda ratio: {
        "shipped default": briefing.AttentionMatching(ratio=ratio),
        "hybrid": briefing.AttentionMatching(ratio=ratio, allocation="hybrid", agnostic=0.9, sinks=4)})
    row = compact_time.length_row(tiny, 200, 0.2, 1, extends=3)
    assert len(row["extends"]) == 3 and row["tokens"] <= 200
    ratios = sorted(b["importance_s"] / b["prefill_s"] for b in row["extends"])
    assert row["importance_s"] / row["prefill_s"] == ratios[1]
    assert row["extend_with_importance_s"] >= row["prefill_s"] + row["importance_s"]
    assert set(row["selectors"]) == {"shipped default", "hybrid"}
    assert row["selectors"]["hybrid"]["context_slots"] >= row["selectors"]["hybrid"]["kept_slots"] > 0
    assert "the median of 3 builds" in compact_time.table(dict(ratio=0.2, repeats=1, threads=1, load_average=[0],
                                                                   lengths=[row]))


def test_service_bench_block_is_generated_from_the_committed_json(tmp_path, capsys):
    from benchmarks import service_bench

    committed = ROOT / "docs" / "results" / "service" / "service_bench.json"
    if not committed.is_file():   # not yet run: the block says so and names the command that fills it
        assert "(not yet run)" in block("service-bench") and "python -m benchmarks.service_bench" in \
            block("service-bench")
        return
    result = json.loads(committed.read_text())
    assert block("service-bench") == service_bench.markdown(result).strip(), \
        f"block service-bench is stale: run `python -m benchmarks.service_bench --report {committed} --readme`"
    assert block("service-bench").splitlines()[0].startswith("<!-- generated by `python -m benchmarks.service_bench")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC.read_text().replace(block("service-bench"), "old table"))
    assert service_bench.main(["--report", str(committed), "--readme", str(doc)]) == 0
    assert "block updated" in capsys.readouterr().out and doc.read_text() == DOC.read_text()


def long_command(name: str) -> list[str]:
    """The arguments of the command named in a long-suite block's first line."""
    first = block(name).splitlines()[0]
    m = re.fullmatch(r"<!-- generated by `python -m benchmarks\.rlm_bench\.long (.*)` -->", first)
    assert m, f"block {name} does not name its command: {first[:120]}"
    return shlex.split(m.group(1))


@pytest.mark.parametrize("name", [
    pytest.param("long-suite", marks=pytest.mark.slow),  # 42 runs merged: about 10 s
    "long-suite-w1024", "long-suite-w1024-x8"])
def test_long_suite_blocks_are_generated_by_the_command_they_name(name):
    from benchmarks.rlm_bench import long

    args = long.build_parser().parse_args(long_command(name))
    assert args.readme == "docs/benchmarks.md"
    assert args.readme_block == (name.removeprefix("long-suite-") if name != "long-suite" else None)
    result = long.merge([json.loads((ROOT / p).read_text()) for p in args.report])
    body = block(name).split("\n", 1)[1]
    assert body.strip() == long.markdown(result).strip(), f"block {name} is stale: run the command in its first line"


def test_rlm_bench_readme_option_rewrites_the_docs_block(tmp_path, monkeypatch, capsys):
    from benchmarks.rlm_bench import cli

    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC.read_text().replace(block("rlm-bench"), "old table"))
    monkeypatch.setattr(readme, "DOC", doc)
    monkeypatch.chdir(ROOT)
    assert cli.main(["--readme", "docs/results/rlm_bench/results.json"]) == 0
    assert "updated" in capsys.readouterr().out
    assert doc.read_text() == DOC.read_text()


def test_concurrency_block_is_generated_from_the_committed_json(tmp_path, monkeypatch, capsys):
    from benchmarks import concurrency_bench

    path = "docs/results/concurrency/concurrency_bench.json"
    result = json.loads((ROOT / path).read_text())
    assert block("concurrency-bench") == concurrency_bench.markdown(result).strip(), \
        f"docs/benchmarks.md block concurrency-bench is stale: run `python -m benchmarks.concurrency_bench " \
        f"--report {path} --readme`"
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC.read_text().replace(block("concurrency-bench"), "old table"))
    monkeypatch.setattr(readme, "DOC", doc)
    assert concurrency_bench.main(["--report", str(ROOT / path), "--readme"]) == 0
    assert doc.read_text() == DOC.read_text()


def test_concurrency_bench_runs_and_its_pools_overlap(tmp_path):
    """The benchmark itself, at a small scale: a pool of 2 has 2 requests in flight and beats a pool of 1."""
    from benchmarks import concurrency_bench

    assert concurrency_bench.main(["--delay", "0.05", "--queries", "4", "--pools", "1", "2", "--repeats", "1",
                                   "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "concurrency_bench.json").read_text())
    one, two = result["rows"]
    assert (one["pool"], one["max_in_flight"], two["pool"], two["max_in_flight"]) == (1, 1, 2, 2)
    assert one["requests"] == two["requests"] == 4 and two["median_s"] < one["median_s"]


def test_fit_probe_adds_reference_queries_to_the_fit_and_writes_its_figures(tiny, tmp_path, monkeypatch, capsys):
    """`benchmarks.fit_probe`: the extra queries reach the fit (its rows grow by them, and only inside the probe), the
    selection is the same in every row, top-k is each row's reference (ratio 1), and a table and a plot come out;
    a bad setting is refused with a line naming the argument."""
    import json

    from benchmarks import fit_probe
    from briefing import compaction

    seen = []
    real = compaction.fit_problem
    monkeypatch.setattr(compaction, "fit_problem", lambda Q, *a, **k: seen.append(Q.shape[2]) or real(Q, *a, **k))
    res = fit_probe.run(tiny, "dev", 300, 2, 0.2, context=(16,), repeats=((2, 8),), ridges=(1.0,))
    assert res["questions"] == 2 and res["tokens"] <= 300
    assert set(res["summary"]) == {"top-k", "fit", "fit + context 16", "fit + repeat 2 x 8", "fit, ridge 1"}
    assert res["summary"]["top-k"]["median_ratio_to_topk"] == 1.0
    assert all(v >= 0 for row in res["rows"] for k, v in row.items() if k != "kind")
    g = tiny.model.config.num_attention_heads // tiny.kv_heads
    shipped = seen[0]   # the fit's rows per KV head: the prompt's queries, then the same plus 16 (context) and more
    assert seen[0] == seen[3] == shipped and seen[1] == shipped + g * 16 and seen[2] > shipped + g * 16
    assert compaction.fit_problem is not real and fit_probe.compaction.fit_problem.__name__ == "<lambda>"
    (tmp_path / "fit_probe.json").write_text(json.dumps([res]))
    fit_probe.plot([res], tmp_path / "fit_probe.png")
    assert (tmp_path / "fit_probe.png").stat().st_size > 0 and "| fit + context 16 |" in fit_probe.table([res])
    with pytest.raises(SystemExit) as e:
        fit_probe.main(["--tokens", "100", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--tokens: got 100" in capsys.readouterr().err
