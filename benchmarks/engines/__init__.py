"""Benchmark-only MD engines (the physics that the long G-metaD runs drive)."""
