"""Benchmarks of issue 7: scripts printing JSON lines and a markdown table (see README.md)."""
