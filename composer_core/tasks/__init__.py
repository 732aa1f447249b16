"""Synthetic tasks with verifiable rewards, textual feedback and hints: the embedded default job trains on these.

Pure Python (no torch, no transformers), so that rewards can be computed anywhere a trainer runs.
"""
