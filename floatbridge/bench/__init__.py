"""The benchmark suite behind `floatbridge bench` (see BENCHMARKS.md for the latest figures)."""
