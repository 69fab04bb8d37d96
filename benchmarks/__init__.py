"""Benchmark programs: each prints a table and writes JSON, with ratios measured in the same run."""
