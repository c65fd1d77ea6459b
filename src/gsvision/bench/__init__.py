"""Benchmark harnesses: `gsvision bench NAME` runs `gsvision.bench.NAME.main`, writing
`benchmarks/results/NAME.json`."""
