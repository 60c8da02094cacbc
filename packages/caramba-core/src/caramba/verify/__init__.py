"""Verification after a run: does the student still behave like its teacher?

`config` (the manifest's `verify:` blocks, importable without torch), `checks` (compare,
fidelity, eval), `scoring` (log-probabilities and greedy answers), `run` (a run's blocks,
with fail_fast).
"""
