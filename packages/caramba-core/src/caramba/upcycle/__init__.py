"""Upcycling a pretrained model into a DBA student.

`surgery` (copy shared weights, initialise DBA projections from the teacher's by whitened
truncated SVD), `activations` (attention inputs/outputs through hooks), `teacher` (loading
and checks), `blockwise` and `distill` (the two training phases of trainer.upcycle,
`caramba.training.upcycle`), `summary` (the report's upcycle section).
"""
