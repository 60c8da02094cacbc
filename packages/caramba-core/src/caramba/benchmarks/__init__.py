"""Benchmarks run after training, registered under `caramba.benchmarks` by `config.type`."""
