"""Benchmark and evaluation harness (`rlm bench`): episodes, conditions, report, replay. See rlm.bench.cli."""
