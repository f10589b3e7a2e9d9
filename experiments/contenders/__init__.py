"""Benchmark contenders: one standalone script per framework, run by experiments/benchmark.py."""
