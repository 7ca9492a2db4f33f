"""Seed 003: regular languages as a multi-task sequence problem.

fsm (regex -> minimal DFA), data (labelled strings), dataset (tensors and masks),
model (causal transformer, three heads), losses, metrics, hooks (captures), task.
"""

from epochal.tasks.regex.fsm import DFA, PatternError, compile_regex

__all__ = ["DFA", "PatternError", "compile_regex"]
