"""Inference: generation with KV caches chosen by measurement, and speculative decoding.

Import the parts you need (`caramba.infer.generate`, `.speculative`, `.cache_plan`); this
package's `__init__` re-exports them lazily so `import caramba.infer` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "GenerateConfig": "caramba.infer.config",
    "Generator": "caramba.infer.generate",
    "GenerationStats": "caramba.infer.generate",
    "ContextLengthError": "caramba.infer.generate",
    "CacheDecision": "caramba.infer.cache_plan",
    "CacheBudgetError": "caramba.infer.cache_plan",
    "SpeculativeConfig": "caramba.infer.speculative",
    "SpeculativeGenerator": "caramba.infer.speculative",
    "ContextLookupDraft": "caramba.infer.lookup",
    "LookupAugmentedDraft": "caramba.infer.lookup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'caramba.infer' has no attribute {name!r}")
