"""Benchmarks: each prints figures for one property of `concordia run`; none asserts timing."""
