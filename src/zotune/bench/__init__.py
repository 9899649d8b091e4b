"""Benchmarks: step cost against forward passes, and memory against inference (``zotune bench``)."""
