"""How much a KV-cache kind changes a model's predictions, measured on real text.

Every measurement decodes through the cache the way generation does: prefill a prefix, then
feed one token at a time, so attention reads the stored (possibly quantized) keys and values.

- delta NLL: mean next-token negative log-likelihood with the candidate cache minus that with
  the reference cache (fp16 unless told otherwise), in nats; ppl ratio = exp(delta NLL).
- needle KL: a passage, then unrelated text, then the passage's first half again; the mean
  KL(reference || candidate) of the predictions over the passage's second half. Retrieving
  text from far back in the context is what a lossy cache hurts first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from caramba.cache.spec import CacheSpec


@torch.no_grad()
def decode_logits(model: torch.nn.Module, tokens: torch.Tensor, spec: CacheSpec,
                  prefill: int, chunk: int = 1) -> torch.Tensor:
    """Logits (B, T - prefill + 1, V) predicting tokens[:, prefill:] (and one beyond).

    tokens[:, :prefill] go in one call; the rest `chunk` tokens at a time (1 = decoding).
    """
    if not 1 <= prefill <= tokens.shape[1]:
        raise ValueError(f"prefill must lie in [1, {tokens.shape[1]}], got {prefill}")
    ctx = spec.context()
    out = [model(tokens[:, :prefill], ctx)[:, -1:].float()]
    ctx.position = prefill
    for start in range(prefill, tokens.shape[1], chunk):
        piece = tokens[:, start : start + chunk]
        out.append(model(piece, ctx).float())
        ctx.position += piece.shape[1]
    return torch.cat(out, dim=1)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy of logits (B, n(+1), V) against targets (B, n)."""
    n = targets.shape[1]
    return F.cross_entropy(logits[:, :n].reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()


def mean_kl(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(candidate)), in nats."""
    p = F.log_softmax(reference.float(), dim=-1)
    q = F.log_softmax(candidate.float(), dim=-1)
    # KL is non-negative; float rounding can give -1e-8 for identical distributions.
    return max((p.exp() * (p - q)).sum(-1).mean().item(), 0.0)


@dataclass(frozen=True)
class Probe:
    """Real-text inputs of a quality probe: text windows and needle sequences."""

    text: torch.Tensor  # (B, T) consecutive tokens of held-out text
    prefill: int  # how many of them are prefilled before decoding starts
    needle: torch.Tensor  # (B, T2): passage, filler, the passage again
    needle_from: int  # predictions of needle tokens [needle_from, T2) are compared (KL)

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, *, batch: int = 4, length: int = 192,
                    passage: int = 16, seed: int = 0) -> Probe:
        """Windows of a 1-D token stream (held-out text), chosen by a seeded generator.

        Each needle sequence is a passage, then `length - 2 * passage` tokens of text from
        elsewhere, then the passage again; the second half of the repeat is scored.
        """
        tokens = tokens.reshape(-1).long()
        if tokens.numel() < 4 * length:
            raise ValueError(f"probe text has {tokens.numel()} tokens; need at least "
                             f"{4 * length}")
        filler = max(length - 2 * passage, 1)
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, tokens.numel() - length, (3 * batch,), generator=g).tolist()
        text = torch.stack([tokens[s : s + length] for s in starts[:batch]])
        needles = []
        for s, f in zip(starts[batch : 2 * batch], starts[2 * batch :], strict=True):
            p = tokens[s : s + passage]
            needles.append(torch.cat((p, tokens[f : f + filler], p)))
        needle = torch.stack(needles)
        return cls(text, max(1, length // 4), needle, needle.shape[1] - passage // 2)

    def to(self, device: torch.device | str) -> Probe:
        return Probe(self.text.to(device), self.prefill, self.needle.to(device), self.needle_from)


@dataclass(frozen=True)
class QualityFigures:
    """How a cache kind compares with the reference on one probe."""

    nll: float
    reference_nll: float
    needle_kl: float
    max_logit_error: float | None = None  # vs the exact (fp32) cache, when one was given

    @property
    def delta_nll(self) -> float:
        return self.nll - self.reference_nll

    @property
    def ppl_ratio(self) -> float:
        return math.exp(self.delta_nll)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "delta_nll": self.delta_nll, "ppl_ratio": self.ppl_ratio}


class QualityProbe:
    """Measures cache specs against a reference spec on one Probe (reference computed once).

    With `exact` (an fp32 spec), each measurement also reports the largest logit difference
    from exact decoding.
    """

    def __init__(self, model: torch.nn.Module, probe: Probe, reference: CacheSpec,
                 exact: CacheSpec | None = None) -> None:
        self.model = model
        self.probe = probe
        self._ref_text, self._ref_needle = self._run(reference)
        self.reference_nll = nll(self._ref_text, probe.text[:, probe.prefill :])
        self._exact = None if exact is None else decode_logits(model, probe.text, exact,
                                                               probe.prefill)

    def _run(self, spec: CacheSpec) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.probe
        text = decode_logits(self.model, p.text, spec, p.prefill)
        scored = p.needle.shape[1] - p.needle_from
        needle = decode_logits(self.model, p.needle, spec, p.needle_from)[:, :scored]
        return text, needle

    def measure(self, spec: CacheSpec) -> QualityFigures:
        text, needle = self._run(spec)
        p = self.probe
        return QualityFigures(
            nll=nll(text, p.text[:, p.prefill :]),
            reference_nll=self.reference_nll,
            needle_kl=mean_kl(self._ref_needle, needle),
            max_logit_error=None if self._exact is None
            else (text - self._exact).abs().max().item(),
        )
