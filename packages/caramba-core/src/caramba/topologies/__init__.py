"""Topologies: how layers connect (stacked, residual, nested, ...), registered under
`caramba.topologies`."""
