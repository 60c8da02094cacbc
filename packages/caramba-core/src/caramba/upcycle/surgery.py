"""Attention surgery: start a DBA student from its pretrained teacher.

Every tensor the two models share (embeddings, norms, feed-forward layers, attention layers
that are not DBA) is copied by name; a missing or misshapen one is a CheckpointError naming
it. Each DBA attention layer is initialised from the teacher layer at the same place:

Scores. Teacher head h (group g, head width d) scores a query at m against a key at n as
x_m^T W_q,h^T R(-Δθ) W_k,g x_n / sqrt(d), Δ = m - n, where R rotates every rotate-half pair j
(features j and j + d/2) by Δθ_j. The pairs are split between DBA's two paths:

* geometric (RoPE): the student's ladder θ'_i = base'^(-2i/g') fixes which frequencies it can
  carry, so student pair i gets the teacher's own rows (of W_q,h and W_k,g) for the pair j(i)
  with the nearest frequency. They are equal whenever base' = base^(stride·g'/d) for an integer
  stride (stride 1: the g'/2 fastest pairs; `geo_rope_base` computes it). The manifest picks
  the ladder; `SurgeryReport.pair_energy` says how much score energy each teacher pair holds.
* semantic (no RoPE): what the other pairs contribute, taken as if unrotated (Δ = 0), as
  one bilinear form per head A_h = sum_j W_q,hj^T W_k,gj. (Averaging R(-Δθ_j) over distances
  up to 64 tokens measured no better on real text, and over 256 worse.) A group's heads
  share their keys, so they are approximated together: stack L^T A_h L over the group,
  truncated SVD U S V^T to the semantic width s, then W_k = S^½ V^T L^-1 and
  W_q,h = S^½ U_h^T L^-1 · sqrt(s/d).
  L is the Cholesky factor of the second moment of the layer's input (identity without
  calibration data), so the truncation minimises the expected squared score error on real
  inputs rather than on weights alone.

Values. Head h adds W_o,h W_v,g (attention-weighted input) to the output. Same recipe: stack
W_o,h W_v,g L over the group's heads, truncated SVD to the student's value width, W_v = S^½ V^T
L^-1 and W_o,h = U_h S^½. With the teacher's width and groups the weights are copied as is.

Where a kept singular value is zero, keys/values get a small floor (queries/outputs are scaled
to keep the product exact), so no path starts dead: a zero key and zero query would never
receive a gradient. Exactness: with the geometric path holding all of the teacher's pairs
(g' = d, base' = base) and values at full width the student reproduces the teacher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from caramba.errors import CheckpointError
from caramba.layers.attention import AttentionLayer
from caramba.layers.rotary import RotaryCache

RIDGE = 1e-4  # whitening: covariance + RIDGE * mean eigenvalue * I
FLOOR = 1e-3  # smallest kept singular value, relative to the largest, on the key/value side


@dataclass
class LayerSurgery:
    """What surgery did to one DBA layer; energies are fractions of the squared Frobenius
    norm, in the whitened space when calibration data was given."""

    name: str
    geo_pairs: list[int]  # teacher pair j(i) carried by student geometric pair i
    geo_frequency_error: float  # max |log(θ'_i / θ_j(i))|: 0 when the ladders match
    geo_energy: float  # share of the teacher's score energy in the geometric pairs
    sem_energy: float  # share of the remaining pairs' energy kept by the semantic rank
    value_energy: float  # share of the output map W_o W_v kept by the value width
    pair_energy: list[float] = field(default_factory=list)  # per teacher pair, sums to 1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "geo_pairs": self.geo_pairs,
                "geo_frequency_error": self.geo_frequency_error,
                "geo_energy": self.geo_energy, "sem_energy": self.sem_energy,
                "value_energy": self.value_energy}


@dataclass
class SurgeryReport:
    copied: int  # tensors copied unchanged
    layers: list[LayerSurgery]
    whitened: bool

    def to_json(self) -> dict[str, Any]:
        def mean(key: str) -> float:
            values = [getattr(layer, key) for layer in self.layers]
            return sum(values) / len(values) if values else 0.0

        return {"copied_tensors": self.copied, "dba_layers": len(self.layers),
                "whitened": self.whitened, "mean_geo_energy": mean("geo_energy"),
                "mean_sem_energy": mean("sem_energy"),
                "mean_value_energy": mean("value_energy"),
                "layers": [layer.to_json() for layer in self.layers]}


def attention_layers(model: nn.Module) -> list[tuple[str, AttentionLayer]]:
    """Every AttentionLayer of `model` with its module path, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionLayer)]


def geo_rope_base(teacher_base: float, teacher_head_dim: int, geo_head_dim: int,
                  stride: int = 1) -> float:
    """The student RoPE base whose ladder is the teacher's pairs 0, stride, 2·stride, ..."""
    return teacher_base ** (stride * geo_head_dim / teacher_head_dim)


@torch.no_grad()
def upcycle_weights(
    teacher: nn.Module,
    student: nn.Module,
    *,
    covariances: Mapping[str, torch.Tensor] | None = None,
    teacher_name: str = "the teacher",
) -> SurgeryReport:
    """Copy shared tensors from `teacher` into `student`, then initialise its DBA layers.

    `covariances` maps an attention layer's path to the second moment E[x x^T] (d_model^2)
    of its input, measured on real text; without it the SVDs are unweighted.
    """
    dba = {name: layer for name, layer in attention_layers(student) if layer.mode == "dba"}
    copied = _copy_shared(teacher, student, tuple(dba), teacher_name)
    teacher_layers = dict(attention_layers(teacher))
    reports = []
    for name, layer in dba.items():
        source = teacher_layers.get(name)
        if source is None:
            raise CheckpointError(
                f"student attention layer {name!r} (mode dba) has no attention layer at the "
                f"same place in {teacher_name}: the manifest's topology does not follow the "
                "teacher's.", hint="generate the student from the teacher's node tree "
                "(caramba.loaders.model_config) and change only the attention layers.")
        cov = covariances.get(name) if covariances is not None else None
        reports.append(_init_dba(name, source, layer, cov, teacher_name))
    return SurgeryReport(copied, reports, covariances is not None)


def _copy_shared(teacher: nn.Module, student: nn.Module, dba: tuple[str, ...],
                 teacher_name: str) -> int:
    def in_dba(key: str) -> bool:
        return any(key.startswith(prefix + ".") for prefix in dba)

    source = teacher.state_dict()
    target = student.state_dict()
    for key, tensor in target.items():
        if in_dba(key):
            continue
        if key not in source:
            raise CheckpointError(
                f"student tensor {key!r} {tuple(tensor.shape)} has no counterpart in "
                f"{teacher_name}{_hf(key)}: the student's manifest does not describe the "
                "teacher's architecture.", hint=_SHAPE_HINT)
        if tuple(source[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"student tensor {key!r}{_hf(key)} has shape {tuple(tensor.shape)} in the "
                f"manifest but {tuple(source[key].shape)} in {teacher_name}.", hint=_SHAPE_HINT)
    extra = [k for k in source if k not in target and not in_dba(k)]
    if extra:
        raise CheckpointError(
            f"{teacher_name} holds tensor {extra[0]!r}{_hf(extra[0])}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + " which the student's manifest has no place for.", hint=_SHAPE_HINT)
    for key, tensor in target.items():
        if not in_dba(key):
            tensor.copy_(source[key].to(tensor.device, tensor.dtype))
    return sum(1 for key in target if not in_dba(key))


_SHAPE_HINT = ("make the student's vars (d_model, n_layers, d_ff, vocab_size, n_heads, "
               "n_kv_heads, tie_embeddings) equal the teacher's: only its attention layers "
               "may differ.")


def _hf(key: str) -> str:
    from caramba.loaders.llama import hf_name

    name = hf_name(key)
    return f" (Hugging Face name {name!r})" if name else ""


def _check_pair(name: str, t: AttentionLayer, s: AttentionLayer, teacher_name: str) -> None:
    problems = []
    if t.mode == "dba":
        problems.append("the teacher's layer is itself DBA")
    if t.wq.in_features != s.wv.in_features:
        problems.append(f"d_model {s.wv.in_features} vs the teacher's {t.wq.in_features}")
    if t.n_heads != s.n_heads:
        problems.append(f"n_heads {s.n_heads} vs the teacher's {t.n_heads}")
    if s.n_kv_heads % t.n_kv_heads:
        problems.append(f"n_kv_heads {s.n_kv_heads} is not a multiple of the teacher's "
                        f"{t.n_kv_heads} (each student group must lie in one teacher group)")
    if t.rotary is None or s.rotary is None:
        problems.append("surgery needs RoPE on the teacher and on the student's geometric path")
    elif s.geo_head_dim > t.head_dim:
        problems.append(f"geo_dim per head {s.geo_head_dim} exceeds the teacher's head_dim "
                        f"{t.head_dim}")
    if t.wq.bias is not None:
        problems.append("the teacher's attention has biases (not supported by surgery)")
    if problems:
        raise CheckpointError(
            f"cannot initialise DBA layer {name!r} from {teacher_name}: "
            + "; ".join(problems) + ".", hint=_SHAPE_HINT)


def _whitener(cov: torch.Tensor | None, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(dim, dtype=torch.float64)
    if cov is None:
        return eye, eye
    cov = cov.detach().to("cpu", torch.float64)
    ridge = RIDGE * cov.diagonal().mean().clamp_min(1e-12)
    lower = torch.linalg.cholesky(cov + ridge * eye)
    return lower, torch.linalg.solve_triangular(lower, eye, upper=False)


def _log_frequencies(rotary: RotaryCache) -> list[float]:
    """log of each pair's angular frequency as the cache rotates it (RoPE scaling applied).

    Computed in log space from the base, so equal ladders compare exactly equal; scaling
    (Llama 3.x) enters as a per-pair log factor.
    """
    logs = [-(2 * j / rotary.dim) * math.log(rotary.base) for j in range(rotary.dim // 2)]
    if rotary.scaling is None:
        return logs
    plain = torch.tensor(logs, dtype=torch.float64).exp()
    factor = rotary.scaling.apply(plain) / plain
    return [a + b for a, b in zip(logs, factor.log().tolist(), strict=True)]


def _geo_pairs(t: AttentionLayer, s: AttentionLayer) -> tuple[list[int], float]:
    """Teacher pair for each student geometric pair: nearest frequency, each used once.

    Frequencies are the ones each layer really rotates by, so a scaled teacher (Llama 3.x)
    is matched on its scaled ladder.
    """
    assert t.rotary is not None and s.rotary is not None
    log_t, log_s = _log_frequencies(t.rotary), _log_frequencies(s.rotary)
    chosen: list[int] = []
    worst = 0.0
    for want in log_s:
        free = [j for j in range(len(log_t)) if j not in chosen]
        j = min(free, key=lambda j: abs(log_t[j] - want))
        chosen.append(j)
        worst = max(worst, abs(log_t[j] - want))
    return chosen, worst


def _factor(lefts: list[torch.Tensor], right: torch.Tensor, rank: int
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of the stacked forms lefts[i] @ right, which share their right side.

    Each form is n x n but of rank <= r (lefts[i]: n x r, right: r x n), so the SVD runs on
    the r x n core (QR of the stacked lefts first). Returns left (parts, n, rank) scaled by
    S / sqrt(S + floor), right (rank, n) scaled by sqrt(S + floor), and the kept share of
    the squared norm.
    """
    parts, n = len(lefts), right.shape[1]
    if right.shape[0] == 0:
        u = torch.zeros(parts * n, 0, dtype=torch.float64)
        sv = torch.zeros(0, dtype=torch.float64)
        vt = torch.zeros(0, n, dtype=torch.float64)
    else:
        q, r = torch.linalg.qr(torch.cat(lefts))
        core_u, sv, vt = torch.linalg.svd(r @ right, full_matrices=False)
        u = q @ core_u
    total = float((sv**2).sum())
    keep = min(rank, sv.numel())
    u, sv, vt = u[:, :keep], sv[:keep], vt[:keep]
    floor = FLOOR * float(sv[0]) if keep and float(sv[0]) > 0 else FLOOR
    left = u * (sv / (sv + floor).sqrt())
    right_out = (sv + floor).sqrt()[:, None] * vt
    if keep < rank:  # wider than the forms' rank: the extra directions start silent
        pad = rank - keep
        left = torch.cat((left, left.new_zeros(left.shape[0], pad)), dim=1)
        noise = torch.randn(n, pad, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(pad))
        extra = torch.linalg.qr(noise)[0]
        right_out = torch.cat((right_out, math.sqrt(floor) * extra.T), dim=0)
    kept = float((sv**2).sum()) / total if total > 0 else 1.0
    return left.reshape(parts, n, rank), right_out, kept


def _init_dba(name: str, t: AttentionLayer, s: AttentionLayer, cov: torch.Tensor | None,
              teacher_name: str) -> LayerSurgery:
    _check_pair(name, t, s, teacher_name)
    H, d, D = t.n_heads, t.head_dim, t.wq.in_features
    half = d // 2
    kv_t, kv_s = t.n_kv_heads, s.n_kv_heads
    per_t, per_s = H // kv_t, H // kv_s
    sem, geo, val = s.sem_head_dim, s.geo_head_dim, s.v_head_dim

    def weights(linear: nn.Linear, heads: int) -> torch.Tensor:
        return linear.weight.detach().to("cpu", torch.float64).reshape(heads, -1, D)

    wq, wk, wv = weights(t.wq, H), weights(t.wk, kv_t), weights(t.wv, kv_t)
    wo = t.wo.weight.detach().to("cpu", torch.float64).reshape(D, H, d).permute(1, 0, 2)
    lower, inverse = _whitener(cov, D)

    pairs, freq_error = _geo_pairs(t, s)
    rest = [j for j in range(half) if j not in pairs]
    geo_rows = pairs + [j + half for j in pairs]
    rest_rows = rest + [j + half for j in rest]

    out = {"wq_sem": torch.zeros(H, sem, D, dtype=torch.float64),
           "wk_sem": torch.zeros(kv_s, sem, D, dtype=torch.float64),
           "wq_geo": torch.zeros(H, geo, D, dtype=torch.float64),
           "wk_geo": torch.zeros(kv_s, geo, D, dtype=torch.float64),
           "wv": torch.zeros(kv_s, val, D, dtype=torch.float64),
           "wo": torch.zeros(H, D, val, dtype=torch.float64)}
    pair_energy = torch.zeros(half, dtype=torch.float64)
    sem_kept, value_kept = [], []
    for group in range(kv_s):
        heads = list(range(group * per_s, (group + 1) * per_s))
        tg = heads[0] // per_t
        k = wk[tg]
        for h in heads:
            out["wq_geo"][h] = wq[h, geo_rows] * math.sqrt(geo / d)
            pair_energy += _pair_energy(wq[h], k, lower, half)
        out["wk_geo"][group] = k[geo_rows]

        # Head h's whitened form is (W_q,h,R L)^T (W_k,R L): rank <= 2 |R|.
        left, right, kept = _factor([(wq[h, rest_rows] @ lower).T for h in heads],
                                    k[rest_rows] @ lower, sem)
        sem_kept.append(kept)
        out["wk_sem"][group] = right @ inverse
        for i, h in enumerate(heads):
            out["wq_sem"][h] = left[i].T @ inverse * math.sqrt(sem / d)

        if val == d and kv_s == kv_t:
            out["wv"][group] = wv[tg]
            for h in heads:
                out["wo"][h] = wo[h]
            value_kept.append(1.0)
            continue
        left, right, kept = _factor([wo[h] for h in heads], wv[tg] @ lower, val)
        value_kept.append(kept)
        out["wv"][group] = right @ inverse
        for i, h in enumerate(heads):
            out["wo"][h] = left[i]

    _assign(s.wq_sem, out["wq_sem"].reshape(H * sem, D))
    _assign(s.wk_sem, out["wk_sem"].reshape(kv_s * sem, D))
    _assign(s.wq_geo, out["wq_geo"].reshape(H * geo, D))
    _assign(s.wk_geo, out["wk_geo"].reshape(kv_s * geo, D))
    _assign(s.wv, out["wv"].reshape(kv_s * val, D))
    _assign(s.wo, out["wo"].permute(1, 0, 2).reshape(D, H * val))
    total = float(pair_energy.sum())
    shares = (pair_energy / total if total > 0 else pair_energy).tolist()
    return LayerSurgery(
        name=name, geo_pairs=pairs, geo_frequency_error=freq_error,
        geo_energy=sum(shares[j] for j in pairs), sem_energy=sum(sem_kept) / len(sem_kept),
        value_energy=sum(value_kept) / len(value_kept), pair_energy=shares)


def _pair_energy(q: torch.Tensor, k: torch.Tensor, lower: torch.Tensor,
                 half: int) -> torch.Tensor:
    """||L^T (q_j^T k_j) L||_F^2 of each rotate-half pair's (unrotated) score form."""
    qw, kw = q @ lower, k @ lower  # rows in whitened coordinates
    energies = []
    for j in range(half):
        rows = [j, j + half]
        gram_q = qw[rows] @ qw[rows].T
        gram_k = kw[rows] @ kw[rows].T
        energies.append((gram_q * gram_k).sum())  # ||Q^T K||_F^2 = <Q Q^T, K K^T>
    return torch.stack(energies)


@torch.no_grad()
def _assign(linear: nn.Linear, weight: torch.Tensor) -> None:
    linear.weight.copy_(weight.to(linear.weight.device, linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.zero_()
