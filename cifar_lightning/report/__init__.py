"""Reports on runs: `python -m cifar_lightning.report PATH [PATH ...]` (see cli.py), and the
console report of a test.

Modules: runs (finding and reading runs), groups (grouping and labels), stats (statistics),
summary (the figures per group and pair), tables (markdown and csv), plots, origin (provenance
checks), document (writing it all), cli (the command line), console (a test's console report).
"""
