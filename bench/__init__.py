"""Benchmarks of the pipeline (`make bench`, `python -m bench`): ratios measured side by side in one run, written to
docs/benchmarks.md. See bench/__main__.py."""
