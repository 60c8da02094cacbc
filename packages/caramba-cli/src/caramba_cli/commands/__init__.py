"""One sub-command per module."""
