"""The `upcycle` section of report.json: teacher, sizes, KV-cache bytes, surgery."""

from __future__ import annotations

from typing import Any

from torch import nn

from caramba.cache.spec import CacheSpec, bytes_per_token, cache_shapes


def kv_bytes_per_token(model: nn.Module, kind: str = "fp16") -> int:
    """KV-cache bytes per token of every attention layer of `model` (caramba.cache)."""
    return bytes_per_token(cache_shapes(model), CacheSpec(kind=kind))


def upcycle_summary(trainer: Any, student: nn.Module) -> dict[str, Any]:
    teacher = trainer.teacher
    t_kv, s_kv = kv_bytes_per_token(teacher), kv_bytes_per_token(student)
    surgery = trainer.surgery_json() if hasattr(trainer, "surgery_json") else None
    return {
        "teacher": trainer.teacher_ref,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "kv_bytes_per_token_fp16": {"teacher": t_kv, "student": s_kv},
        "kv_reduction": t_kv / s_kv if s_kv else None,
        "surgery": surgery,
    }
