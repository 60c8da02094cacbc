"""RoPE frequency scaling as checkpoints describe it, read into caramba's `RopeScaling`.

Hugging Face config.json: `rope_scaling` (transformers v5: `rope_parameters`) with
`rope_type: llama3` and its four numbers. llama.cpp GGUF: Llama 3.x files carry no scaling
keys; the converter writes a `rope_freqs.weight` tensor of per-frequency divisors instead
(llama.cpp rotates by inv_freq / rope_freqs[i]). Those divisors follow Meta's rule exactly,
so `from_gguf` recovers the rule's parameters from them and checks that the recovered rule
reproduces every divisor; anything else (linear, YaRN, other divisors) is an error naming
the key or tensor, never silently ignored: a model rotated at the wrong frequencies still
writes text-like output, only worse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from caramba.errors import CheckpointError
from caramba.layers.rotary import RopeScaling, inverse_frequencies

ROPE_FREQS = "rope_freqs.weight"
# What Meta's reference uses and llama.cpp's converter assumes when it writes rope_freqs.
LLAMA3_ORIGINAL_CONTEXT = 8192
_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def from_hf_config(config: dict[str, Any], path: Path) -> RopeScaling | None:
    """The scaling a Hugging Face config.json asks for; None for plain RoPE."""
    key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    params = config.get(key)
    if not params:
        return None
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: `{key}` is {params!r}, not a mapping.")
    kind_key = "rope_type" if "rope_type" in params else "type"
    kind = params.get(kind_key)
    if kind is None and set(params) - {"rope_theta", "partial_rotary_factor"}:
        raise CheckpointError(
            f"{path}: `{key}` ({params!r}) names no rope_type, so caramba cannot tell how to "
            "scale RoPE; it implements rope_type 'llama3'."
        )
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise CheckpointError(
            f"{path}: `{key}.{kind_key}` is {kind!r}; caramba implements RoPE scaling of type "
            "'llama3' only (Llama 3.1-3.3), so this model would run at the wrong frequencies."
        )
    missing = [f for f in _FIELDS if params.get(f) is None]
    if missing:
        raise CheckpointError(
            f"{path}: `{key}.{missing[0]}` is missing; rope_type 'llama3' needs "
            f"{', '.join(_FIELDS)}."
        )
    try:
        return RopeScaling(type="llama3", **{f: params[f] for f in _FIELDS})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join([key, *map(str, error["loc"])])
        raise CheckpointError(f"{path}: `{where}`: {error['msg']}.") from exc


def from_gguf(
    meta: dict[str, Any], arch: str, rope_freqs: torch.Tensor | None, head_dim: int,
    base: float, path: Path,
) -> RopeScaling | None:
    """The scaling of a llama GGUF file: its rope.scaling.* keys and rope_freqs tensor."""
    kind_key = f"{arch}.rope.scaling.type"
    kind = meta.get(kind_key, "none")
    if kind != "none":
        raise CheckpointError(
            f"{path}: metadata '{kind_key}' is {kind!r}; caramba supports no GGUF RoPE scaling "
            "type (Llama 3.x scaling comes as the 'rope_freqs.weight' tensor, which it does "
            "support)."
        )
    for factor_key in (f"{arch}.rope.scaling.factor", f"{arch}.rope.scale_linear"):
        factor = meta.get(factor_key)
        # llama.cpp treats a factor without a type as linear scaling.
        if factor is not None and float(factor) not in (0.0, 1.0):
            raise CheckpointError(
                f"{path}: metadata '{factor_key}' is {factor}: linear RoPE scaling, which "
                "caramba does not support."
            )
    if rope_freqs is None:
        return None
    return _llama3_from_divisors(rope_freqs, head_dim, base, meta, arch, path)


def _llama3_from_divisors(
    divisors: torch.Tensor, head_dim: int, base: float, meta: dict[str, Any], arch: str,
    path: Path,
) -> RopeScaling | None:
    divisors = divisors.double().flatten()
    if divisors.numel() != head_dim // 2:
        raise CheckpointError(
            f"{path}: tensor {ROPE_FREQS!r} has {divisors.numel()} values; RoPE over "
            f"head_dim {head_dim} needs {head_dim // 2}."
        )
    if not bool(torch.isfinite(divisors).all()) or bool((divisors <= 0).any()):
        raise CheckpointError(f"{path}: tensor {ROPE_FREQS!r} holds values that are not "
                              "positive finite numbers; the file is corrupt.")
    if bool(torch.allclose(divisors, torch.ones_like(divisors), rtol=0, atol=1e-6)):
        return None
    context = int(meta.get(f"{arch}.rope.scaling.original_context_length")
                  or LLAMA3_ORIGINAL_CONTEXT)
    for candidate in _candidates(divisors, head_dim, base, context):
        want = 1.0 / (candidate.apply(inverse_frequencies(head_dim, base)).double()
                      / inverse_frequencies(head_dim, base).double())
        if bool(torch.allclose(want, divisors, rtol=1e-4, atol=0)):
            return candidate
    raise CheckpointError(
        f"{path}: tensor {ROPE_FREQS!r} holds per-frequency RoPE divisors "
        f"({', '.join(f'{v:.4g}' for v in divisors[:6].tolist())}, ...) that follow no Llama 3 "
        "'llama3' scaling rule; caramba supports only that rule."
    )


def _candidates(divisors: torch.Tensor, head_dim: int, base: float, context: int
                ) -> list[RopeScaling]:
    """Llama 3 rules that may have produced `divisors`: fitted from the blended band (two or
    more frequencies between the thresholds), then Meta's defaults with the largest divisor.

    In the band the divisor is 1 / ((1 - s) / factor + s), s = (context / wavelength - low) /
    (high - low): s is linear in context / wavelength, so a least-squares line gives low and
    high once factor (the largest divisor) and context are fixed.
    """
    factor = float(divisors.max())
    out: list[RopeScaling] = []
    inv_freq = inverse_frequencies(head_dim, base).double()
    ratio = context * inv_freq / (2 * torch.pi)  # context / wavelength
    band = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    if factor > 1 and int(band.sum()) >= 2:
        s = (1 / divisors[band] - 1 / factor) / (1 - 1 / factor)
        x = ratio[band]
        slope = float(((x - x.mean()) * (s - s.mean())).sum() / ((x - x.mean()) ** 2).sum())
        if slope > 0:
            low = float(x.mean() - s.mean() / slope)
            high = low + 1 / slope
            out += _valid(factor, round(low, 4), round(high, 4), context)
    out += _valid(factor, 1.0, 4.0, context)
    return out


def _valid(factor: float, low: float, high: float, context: int) -> list[RopeScaling]:
    try:
        return [RopeScaling(type="llama3", factor=round(factor, 4), low_freq_factor=low,
                            high_freq_factor=high, original_max_position_embeddings=context)]
    except ValidationError:
        return []


def to_hf_config(scaling: RopeScaling | None) -> dict[str, Any] | None:
    """`rope_scaling` for a Hugging Face config.json."""
    if scaling is None:
        return None
    return {"rope_type": scaling.type, **{f: getattr(scaling, f) for f in _FIELDS}}
