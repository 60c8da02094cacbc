"""Manifest v2: schema, YAML loading with source positions, interpolation, overrides."""
