"""caramba: one YAML manifest in, a trained model, verification, benchmarks and a report out.

Importing this package is cheap (no torch): the CLI imports it to answer `--help` fast.
"""

__version__ = "0.1.0"
