"""Benchmarks that drive a real Shoal manager (``shoal bench ...``)."""
