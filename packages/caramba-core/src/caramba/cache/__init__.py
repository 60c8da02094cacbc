"""KV caches: fp32, fp16 and quantized (q8_0, q4_0, nf4) storage per cached tensor, a
standard layer cache (k, v) and a decoupled one for DBA (k_sem, k_geo, v)."""

from caramba.cache.kinds import KINDS, QUANTIZED_KINDS, CacheKindError, check_kind
from caramba.cache.layer import DecoupledKVCache, LayerKVCache
from caramba.cache.plan import DecodePlan
from caramba.cache.spec import SPEC_KEY, CacheSpec, bytes_per_token, cache_shapes
from caramba.cache.tensor import CacheTensor

__all__ = [
    "KINDS",
    "QUANTIZED_KINDS",
    "SPEC_KEY",
    "CacheKindError",
    "CacheSpec",
    "CacheTensor",
    "DecodePlan",
    "DecoupledKVCache",
    "LayerKVCache",
    "bytes_per_token",
    "cache_shapes",
    "check_kind",
]
