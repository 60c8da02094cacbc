"""caramba-agents: research agents for caramba manifests' `process` targets. No torch."""

__version__ = "0.1.0"
