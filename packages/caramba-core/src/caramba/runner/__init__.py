"""The run pipeline: plan → build → train → sample → evaluate → artifacts."""
