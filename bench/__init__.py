"""wsgi-tracker's benchmark suite: ``python -m bench`` (see docs/BENCHMARKS.md).

Not part of the installed package: a tool for the source tree, like ``tests/``.
"""
