"""Benchmark and evaluation harness (`rlm bench`): episodes, conditions, report, replay. See
benchmarks.rlm_bench.cli."""
