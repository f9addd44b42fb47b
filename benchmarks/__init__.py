"""Benchmarks and plots of latent-briefing, installed with the project (their plots need the `[bench]` extra).

    pip install -e '.[bench]'                     # matplotlib (make setup does it)
    python -m benchmarks.briefing_bench           # or: make bench
    rlm bench [--quick]                           # benchmarks.rlm_bench, through the rlm command's entry point
"""
