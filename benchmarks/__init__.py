"""Benchmarks and plots of latent-briefing: run from the source checkout, not installed with the library.

    pip install -e '.[bench]'                     # matplotlib
    python -m benchmarks.briefing_bench           # or: make bench
    rlm bench [--quick]                           # benchmarks.rlm_bench, through the rlm command
"""
