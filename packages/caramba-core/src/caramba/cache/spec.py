"""CacheSpec: which kind each cached tensor uses, handed to attention layers through the
forward context, and the list of caches it made (to measure or roll them back together).

A layer asks `spec.make(...)` for its cache on its first call with decoding state; a model
decoded without a spec gets exact fp32 caches (the behaviour `LanguageModel.generate` has
always had).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from caramba.cache.kinds import CacheKindError, check_kind, kind_format, supports
from caramba.cache.layer import DecoupledKVCache, LayerKVCache
from caramba.cache.plan import DecodePlan
from caramba.cache.tensor import DEFAULT_BLOCK_TOKENS, CacheTensor
from caramba.layers.base import ForwardContext

SPEC_KEY = "kv_cache_spec"
TENSOR_NAMES = ("k", "v", "k_sem", "k_geo")


@dataclass
class CacheSpec:
    """Kinds per cached tensor, sizing hints and the decode plan.

    `kind` applies to every tensor without its own entry in `kinds` (keys: k, v, k_sem,
    k_geo). `capacity` pre-sizes each cache (prompt + new tokens) so a generation never
    reallocates; `max_len` bounds it.
    """

    kind: str = "fp32"
    kinds: dict[str, str] = field(default_factory=dict)
    capacity: int = 0
    max_len: int | None = None
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    plan: DecodePlan = field(default_factory=DecodePlan)
    use_kernels: bool = True
    cuda_graphs: bool = True  # replay CUDA decode steps as graphs (caramba.cache.graphs)
    caches: list[LayerKVCache | DecoupledKVCache] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        check_kind(self.kind)
        for name, kind in self.kinds.items():
            if name not in TENSOR_NAMES:
                raise CacheKindError(f"cache kinds: unknown tensor {name!r}; known: "
                                     f"{', '.join(TENSOR_NAMES)}.")
            check_kind(kind, what=f"cache kind for {name}")

    def kind_for(self, name: str) -> str:
        return self.kinds.get(name, self.kind)

    def tensor(self, name: str, batch: int, heads: int, head_dim: int,
               device: torch.device, dtype: torch.dtype) -> CacheTensor:
        return CacheTensor(self.kind_for(name), batch, heads, head_dim, device=device,
                           dtype=dtype, capacity=self.capacity, max_len=self.max_len,
                           block_tokens=self.block_tokens, plan=self.plan, name=name)

    def make(self, shapes: dict[str, tuple[int, int]], batch: int, device: torch.device,
             dtype: torch.dtype) -> LayerKVCache | DecoupledKVCache:
        """A cache for a layer whose cached tensors have these (heads, head_dim) shapes."""
        t = {name: self.tensor(name, batch, *shape, device, dtype)
             for name, shape in shapes.items()}
        if set(t) == {"k", "v"}:
            cache: LayerKVCache | DecoupledKVCache = LayerKVCache(
                t["k"], t["v"], self.plan, self.use_kernels, self.cuda_graphs)
        else:
            cache = DecoupledKVCache(t["k_sem"], t["k_geo"], t["v"], self.plan,
                                     self.use_kernels, self.cuda_graphs)
        self.caches.append(cache)
        return cache

    # ---------------------------------------------------------------- whole-model views

    @property
    def length(self) -> int:
        return self.caches[0].length if self.caches else 0

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches)

    @property
    def bytes_per_token(self) -> int:
        """Storage bytes per token (one sequence) summed over every cache."""
        return sum(c.bytes_per_token for c in self.caches)

    def truncate(self, n: int) -> None:
        for c in self.caches:
            c.truncate(n)

    def reset(self) -> None:
        self.caches.clear()

    def context(self, position: int = 0) -> ForwardContext:
        """A fresh decoding context whose attention layers build their caches from this spec."""
        self.reset()
        return ForwardContext(position=position, state={}, extras={SPEC_KEY: self})


def cache_for(module: object, ctx: ForwardContext, shapes: dict[str, tuple[int, int]],
              batch: int, device: torch.device, dtype: torch.dtype):
    """The module's cache in ctx (made on first use from the ctx's spec, else exact fp32)."""
    cache = ctx.module_state(module)
    if cache is None:
        spec = ctx.extras.get(SPEC_KEY) or CacheSpec()
        cache = spec.make(shapes, batch, device, dtype)
        ctx.set_module_state(module, cache)
    return cache


def cache_shapes(model: torch.nn.Module) -> list[dict[str, tuple[int, int]]]:
    """(heads, head_dim) of every cached tensor, one dict per attention layer of `model`."""
    out = []
    for module in model.modules():
        shapes = getattr(module, "cache_shapes", None)
        if callable(shapes):
            out.append(shapes())
    return out


def bytes_per_token(shapes: Iterable[dict[str, tuple[int, int]]], spec: CacheSpec) -> int:
    """Storage bytes per token of `spec`'s kinds for these layers, without allocating."""
    total = 0
    for layer in shapes:
        for name, (heads, head_dim) in layer.items():
            fmt = kind_format(spec.kind_for(name))
            total += heads * head_dim // fmt.block * fmt.block_bytes
    return total


def spec_supported(shapes: Iterable[dict[str, tuple[int, int]]], spec: CacheSpec) -> bool:
    """Whether every tensor of these layers can be stored in `spec`'s kinds."""
    return all(supports(spec.kind_for(name), *shape)
               for layer in shapes for name, shape in layer.items())
