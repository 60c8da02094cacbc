"""Lower a resolved manifest to an immutable, hashable Plan."""
