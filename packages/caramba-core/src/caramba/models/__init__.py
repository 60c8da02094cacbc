"""Models built from manifest nodes: the generic node builder and the language model."""
