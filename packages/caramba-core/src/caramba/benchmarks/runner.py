"""Run a target's `benchmarks` list and write one CSV per benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from caramba.benchmarks.base import BenchmarkResult
from caramba.errors import InputError
from caramba.manifest.schema import BenchmarkSpec
from caramba.registry import BENCHMARKS


def run_benchmarks(specs: list[BenchmarkSpec], models: dict[str, Any], data: Any,
                   device: torch.device, out_dir: Path) -> list[BenchmarkResult]:
    results = []
    for spec in specs:
        kind = spec.config.get("type")
        if not isinstance(kind, str):
            raise InputError(f"benchmark {spec.id!r}: config.type is missing; known types: "
                             f"{', '.join(BENCHMARKS.names())}.")
        bench = BENCHMARKS.get(kind)()
        try:
            config = bench.Config.model_validate(spec.config)
        except ValidationError as exc:
            raise InputError(f"benchmark {spec.id!r}: invalid config: {exc}") from None
        chosen = {name: m for name, m in models.items() if not spec.models or name in spec.models}
        unknown = [m for m in spec.models if m not in models]
        if unknown:
            raise InputError(f"benchmark {spec.id!r} names models {unknown}; this target has "
                             f"{sorted(models)}.")
        result = bench.run(spec.id, config, chosen, data, device)
        result.kind = kind
        result.write_csv(out_dir / f"{spec.id}.csv")
        results.append(result)
    return results
