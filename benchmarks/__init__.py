"""Speed and memory benchmarks: ``python -m benchmarks`` (see results.md)."""
