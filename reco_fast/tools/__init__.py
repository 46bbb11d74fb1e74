"""Command line, streaming scoring, benchmarks and Spark."""
