"""Miniature R1-V: `python -m demo` (see demo/pipeline.py and docs/demo.md)."""
