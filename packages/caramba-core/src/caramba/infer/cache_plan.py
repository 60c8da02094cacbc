"""`cache_kind: auto`: choose a KV-cache kind by measurement, persist the choice, reuse it.

1. candidates: every kind; a tensor a kind cannot store (a DBA path narrower than a block)
   falls back to fp16 for that tensor only ("nf4 (k_sem fp16)").
2. budget: drop candidates whose cache for (batch x capacity) tokens exceeds cache_budget_mb.
3. quality gates on a probe of held-out real text, against an fp16 cache: delta NLL, perplexity
   ratio and needle KL (`caramba.infer.quality`). Without probe text only exact kinds pass.
4. micro-benchmark the survivors on this device (decode tokens/s) and keep the fastest;
   within 5% of the fastest, the smaller cache wins.
5. persist the decision (atomic JSON) keyed by (model hash, device, dtype, shape bucket);
   later runs reuse it until it is older than cache_plan_probe_interval_s or the key changes.
   A corrupt plan file is logged, ignored and rewritten — never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from caramba.atomic import atomic_write_json
from caramba.cache.kinds import KINDS, QUANTIZED_KINDS, supports
from caramba.cache.plan import DecodePlan, auto_span
from caramba.cache.spec import CacheSpec, bytes_per_token, cache_shapes
from caramba.errors import InputError
from caramba.infer.config import GenerateConfig
from caramba.infer.quality import Probe, QualityProbe

log = logging.getLogger("caramba.infer")

PLAN_FORMAT = "caramba.cache_plans"
PLAN_VERSION = 1
BENCH_STEPS = 12
BENCH_CONTEXT = 512
SPEED_TIE = 0.05


class CacheBudgetError(InputError, ValueError):
    """No cache kind fits the memory budget."""


@dataclass
class Candidate:
    """One cache configuration under consideration, and what was measured about it."""

    label: str
    kind: str
    kinds: dict[str, str]
    bytes_per_token: int
    block_tokens: int = 32  # exact (full-precision) tail of a quantized cache; 0: none
    cache_mb: float = 0.0
    fits_budget: bool = True
    quality: dict[str, float] | None = None
    passed: bool | None = None
    reason: str = ""
    tokens_per_s: float | None = None


@dataclass
class CacheDecision:
    """The chosen kind(s), why, and every candidate's figures; queryable and persisted."""

    kind: str
    kinds: dict[str, str]
    label: str
    key: str
    source: str  # probe | persisted
    decided_at: float
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # what the choice depended on
    block_tokens: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheDecision:
        fields = {k: data[k] for k in ("kind", "kinds", "label", "key", "source", "decided_at",
                                       "reason")}
        if not isinstance(fields["kinds"], dict) or fields["kind"] not in KINDS:
            raise ValueError("malformed kinds")
        decision = cls(**fields, candidates=[Candidate(**c) for c in data.get("candidates", [])],
                       settings=dict(data.get("settings") or {}),
                       block_tokens=int(data.get("block_tokens", 32)))
        float(decision.decided_at)
        return decision

    def summary(self) -> str:
        chosen = next((c for c in self.candidates if c.label == self.label), None)
        figures = ""
        if chosen is not None:
            figures = f", {chosen.bytes_per_token} bytes/token"
            if chosen.quality:
                figures += (f", dNLL {chosen.quality['delta_nll']:+.4f}, needle KL "
                            f"{chosen.quality['needle_kl']:.2e}")
            if chosen.tokens_per_s:
                figures += f", {chosen.tokens_per_s:.1f} tokens/s"
        return f"cache {self.label} ({self.source}{figures}): {self.reason}"

    def stale(self, interval_s: float | None, now: float | None = None) -> bool:
        return interval_s is not None and (now or time.time()) - self.decided_at > interval_s

    def reusable(self, config: GenerateConfig, probe: torch.Tensor | None) -> bool:
        """Fresh enough, and decided under the same budget, gates and probe availability."""
        return (not self.stale(config.cache_plan_probe_interval_s)
                and self.settings == selection_settings(config, probe))


def selection_settings(config: GenerateConfig, probe: torch.Tensor | None) -> dict[str, Any]:
    """The settings a decision depends on besides its key; a change means re-probing."""
    return {"cache_budget_mb": config.cache_budget_mb, "max_delta_nll": config.max_delta_nll,
            "max_ppl_ratio": config.max_ppl_ratio, "max_needle_kl": config.max_needle_kl,
            "cache_auto_benchmark": config.cache_auto_benchmark,
            "cache_block_tokens": config.cache_block_tokens, "probe": probe is not None}


# ---------------------------------------------------------------------- keys


def model_hash(model: torch.nn.Module) -> str:
    """A fingerprint of the architecture and weights: names, shapes, dtypes and up to 1024
    evenly strided values of every tensor (cheap even for billions of parameters)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            sample = flat[:: max(1, flat.numel() // 1024)][:1024]
            digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.machine()}:{torch.get_num_threads()}threads"


def plan_key(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch: int,
             capacity: int) -> str:
    bucket = f"b{batch}-s{auto_span(capacity)}"
    return f"{model_hash(model)}|{device_name(device)}|{str(dtype).removeprefix('torch.')}|{bucket}"


# ---------------------------------------------------------------------- persistence


class PlanStore:
    """Decisions on disk: {"format", "version", "plans": {key: decision}}, written atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._warned = False

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("format") != PLAN_FORMAT or not isinstance(document["plans"], dict):
                raise ValueError("not a caramba cache-plan file")
            if document.get("version") != PLAN_VERSION:
                raise ValueError(f"version {document.get('version')!r}, expected {PLAN_VERSION}")
            return document["plans"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            if self._warned:
                return {}
            self._warned = True
            log.warning("cache plan file %s is unreadable or corrupt (%s): ignoring it, "
                        "re-probing, and rewriting it", self.path, exc)
            return {}

    def get(self, key: str) -> CacheDecision | None:
        entry = self.load().get(key)
        if entry is None:
            return None
        try:
            return CacheDecision.from_dict(entry)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("cache plan %s: entry %s is malformed (%s); re-probing", self.path,
                        key, exc)
            return None

    def put(self, decision: CacheDecision) -> None:
        plans = self.load()
        plans[decision.key] = decision.to_dict()
        try:
            atomic_write_json(self.path, {"format": PLAN_FORMAT, "version": PLAN_VERSION,
                                          "plans": plans})
        except OSError as exc:
            log.warning("cannot write cache plan file %s (%s); the decision is not persisted",
                        self.path, exc)


# ---------------------------------------------------------------------- deciding


def candidates(model: torch.nn.Module, block_tokens: int = 32) -> list[Candidate]:
    """One candidate per kind; tensors a kind cannot store fall back to fp16 (per path).

    Quantized kinds come twice when block_tokens > 0: with the exact tail (recent tokens in
    full precision; decode steps take the exact path) and without it ("no tail": every token
    quantized on arrival, so per-head caches decode through the fused kernels). Which is
    faster depends on the device; the gates and the benchmark decide.
    """
    shapes = cache_shapes(model)
    names = sorted({name for layer in shapes for name in layer})
    out = []
    for kind in KINDS:
        kinds = {name: "fp16" for name in names
                 if not all(supports(kind, *layer[name]) for layer in shapes if name in layer)}
        if names and len(kinds) == len(names):
            continue  # nothing this kind can store: it would just be fp16 again
        label = kind + (f" ({', '.join(f'{n} fp16' for n in kinds)})" if kinds else "")
        spec = CacheSpec(kind=kind, kinds=kinds)
        size = bytes_per_token(shapes, spec)
        if kind in QUANTIZED_KINDS:
            if block_tokens:
                out.append(Candidate(label, kind, kinds, size, block_tokens))
            out.append(Candidate(label + (" no-tail" if block_tokens else ""), kind, kinds,
                                 size, 0))
        else:
            out.append(Candidate(label, kind, kinds, size, 0))
    return out


def decide_cache(model: torch.nn.Module, config: GenerateConfig, *, batch: int, capacity: int,
                 probe: torch.Tensor | None, previous: CacheDecision | None = None
                 ) -> CacheDecision:
    """The cache decision for this model, device, dtype and shape: reused or measured."""
    param = next(model.parameters())
    key = plan_key(model, param.device, param.dtype, batch, capacity)
    if previous is not None and previous.key == key and previous.reusable(config, probe):
        return previous
    store = PlanStore(config.cache_plan_path) if config.cache_plan_path else None
    if store is not None:
        found = store.get(key)
        if found is not None and found.reusable(config, probe):
            found.source = "persisted"
            log.info("%s", found.summary())
            return found
        if found is not None:
            log.info("cache plan for %s is stale or was chosen under other settings: "
                     "re-probing", key)
    decision = measure(model, config, key=key, batch=batch, capacity=capacity, probe=probe)
    decision.settings = selection_settings(config, probe)
    log.info("%s", decision.summary())
    if store is not None:
        store.put(decision)
    return decision


def measure(model: torch.nn.Module, config: GenerateConfig, *, key: str, batch: int,
            capacity: int, probe: torch.Tensor | None) -> CacheDecision:
    """Budget filter, quality gates, micro-benchmark: the full auto selection."""
    cands = candidates(model, config.cache_block_tokens)
    for c in cands:
        c.cache_mb = c.bytes_per_token * capacity * batch / 2**20
        if config.cache_budget_mb is not None and c.cache_mb > config.cache_budget_mb:
            c.fits_budget, c.passed = False, False
            c.reason = f"needs {c.cache_mb:.2f} MB > budget {config.cache_budget_mb:g} MB"
    alive = [c for c in cands if c.fits_budget]
    if not alive:
        smallest = min(cands, key=lambda c: c.cache_mb)
        raise CacheBudgetError(
            f"cache_budget_mb {config.cache_budget_mb:g} is too small for any cache kind: "
            f"{batch} sequence(s) x {capacity} tokens need at least {smallest.cache_mb:.2f} MB "
            f"({smallest.label}, {smallest.bytes_per_token} bytes/token).",
            hint="raise cache_budget_mb, or generate fewer tokens / a shorter prompt.")
    _quality_gates(model, config, alive, probe)
    alive = [c for c in alive if c.passed]
    if config.cache_auto_benchmark and len(alive) > 1:
        _benchmark(model, alive, batch, probe)
        best = max(c.tokens_per_s or 0.0 for c in alive)
        near = [c for c in alive if (c.tokens_per_s or 0.0) >= best * (1 - SPEED_TIE)]
        chosen = min(near, key=lambda c: (c.bytes_per_token, -c.block_tokens))
        reason = (f"fastest passing candidate ({chosen.tokens_per_s:.1f} tokens/s; within "
                  f"{SPEED_TIE:.0%} of the best, the smallest cache wins)")
    else:
        chosen = min(alive, key=lambda c: (c.bytes_per_token, -c.block_tokens))
        reason = "smallest passing candidate" + ("" if len(alive) > 1 else " (only one passed)")
    return CacheDecision(chosen.kind, chosen.kinds, chosen.label, key, "probe", time.time(),
                         reason, cands, block_tokens=chosen.block_tokens)


def _quality_gates(model: torch.nn.Module, config: GenerateConfig, cands: list[Candidate],
                   probe: torch.Tensor | None) -> None:
    lossy = [c for c in cands if c.kind in QUANTIZED_KINDS]
    for c in cands:
        if c.kind not in QUANTIZED_KINDS:
            c.passed, c.reason = True, "exact storage (fp16 is the reference)"
    if not lossy:
        return
    param = next(model.parameters())
    try:
        sample = None if probe is None else Probe.from_tokens(
            probe, batch=config.probe_batch, length=config.probe_tokens).to(param.device)
    except ValueError as exc:
        sample, why = None, str(exc)
    else:
        why = "no probe text was given"
    if sample is None:
        log.warning("cache_kind auto: %s, so quantized kinds cannot be checked on real text; "
                    "only fp32/fp16 are eligible", why)
        for c in lossy:
            c.passed, c.reason = False, f"unverified: {why}"
        return
    reference = QualityProbe(model, sample, CacheSpec(kind="fp16"))
    for c in lossy:
        figures = reference.measure(CacheSpec(kind=c.kind, kinds=c.kinds,
                                              block_tokens=c.block_tokens))
        c.quality = figures.to_dict()
        failures = []
        if figures.delta_nll > config.max_delta_nll:
            failures.append(f"dNLL {figures.delta_nll:.4f} > {config.max_delta_nll:g}")
        if figures.ppl_ratio > config.max_ppl_ratio:
            failures.append(f"ppl ratio {figures.ppl_ratio:.4f} > {config.max_ppl_ratio:g}")
        if figures.needle_kl > config.max_needle_kl:
            failures.append(f"needle KL {figures.needle_kl:.2e} > {config.max_needle_kl:g}")
        c.passed = not failures
        c.reason = "; ".join(failures) if failures else "passed the quality gates"


@torch.no_grad()
def _benchmark(model: torch.nn.Module, cands: list[Candidate], batch: int,
               probe: torch.Tensor | None) -> None:
    from caramba.infer.generate import decode_one, prefill

    param = next(model.parameters())
    vocab = model(torch.zeros(1, 1, dtype=torch.long, device=param.device)).shape[-1]
    if probe is not None and probe.numel() >= BENCH_CONTEXT:
        context = probe.reshape(-1)[:BENCH_CONTEXT].to(param.device).expand(batch, -1)
    else:
        g = torch.Generator().manual_seed(0)
        context = torch.randint(0, vocab, (batch, BENCH_CONTEXT), generator=g).to(param.device)
    for c in cands:
        spec = CacheSpec(kind=c.kind, kinds=c.kinds, capacity=BENCH_CONTEXT + BENCH_STEPS + 2,
                         block_tokens=c.block_tokens, plan=DecodePlan("auto"))
        ctx = spec.context()
        logits = prefill(model, context, ctx, spec.plan)
        token = logits.argmax(-1, keepdim=True)
        decode_one(model, token, ctx)  # warm-up
        started = time.perf_counter()
        for _ in range(BENCH_STEPS):
            decode_one(model, token, ctx)
        c.tokens_per_s = BENCH_STEPS * batch / (time.perf_counter() - started)
