"""docs/reference.md is generated from the schema; every user-facing field is documented."""

from __future__ import annotations

from pathlib import Path

from caramba.reference import SECTIONS, VERIFY_SECTIONS, render_reference
from caramba.registry import BENCHMARKS, DATASETS, EMBEDDERS, LAYERS, TOPOLOGIES

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_every_option_has_a_description() -> None:
    models = [model for _, model in SECTIONS + VERIFY_SECTIONS]
    for registry in (DATASETS, EMBEDDERS, LAYERS, TOPOLOGIES, BENCHMARKS):
        models += [registry.get(name).Config for name in registry.names()]
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items()
               if name not in ("type", "layers") and not f.description]
    assert not missing, f"fields without a description: {missing}"


def test_committed_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/reference.md is stale: run `python scripts/gen_reference.py`")
