"""readegress benchmarks: run ``python -m bench SUBCOMMAND`` from the repository root.

Benchmarks print medians and ratios against named peers measured in the same
run; they are not pass/fail tests. See bench/README.md.
"""
