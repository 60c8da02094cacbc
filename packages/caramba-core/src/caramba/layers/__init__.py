"""Layers: thin torch modules, one concept per file, registered under `caramba.layers`."""
