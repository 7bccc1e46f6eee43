"""Benchmarks: the interactive QA evaluation, question-level win rates, and speed measurements."""
