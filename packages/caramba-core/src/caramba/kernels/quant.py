"""Reference quantization for the cache formats, in plain torch on any device.

q8_0 and q4_0 reproduce GGML's quantize_row_q8_0_ref / quantize_row_q4_0_ref bit for bit:
every step is one float32 operation in the same order as the C code (x * (1/d), not x / d),
rounding is roundf (half away from zero) and the scale is stored as fp16 round-to-nearest-even.

nf4 has no GGML reference; its rule, which every backend must follow to stay byte-identical:
absmax = max|x| (float32), n = x / absmax (IEEE division; 0 when absmax is 0), q = the index of
the codebook entry with the smallest float32 |n - NF4[i]| (ties to the lower index), stored
absmax = fp16(absmax).
"""

from __future__ import annotations

import torch

from caramba.kernels.formats import NF4_CODEBOOK, check_width, get_format, logical_width


def _check_float(x: object, argument: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{argument}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{argument}: expected a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{argument}: expected at least one dimension (the row), got a scalar")
    return x


def _trunc(v: torch.Tensor) -> torch.Tensor:
    """Round toward zero; |v| <= 128.5 here, and int conversion is much faster than trunc on CPU."""
    return v.to(torch.int32).to(v.dtype)


def _roundf(v: torch.Tensor) -> torch.Tensor:
    """C roundf: half away from zero. (floor(|v| + 0.5) would round 0.49999997 up.)"""
    t = _trunc(v)
    frac = v - t  # exact: the fractional bits of a float are a float
    return t + (frac >= 0.5).to(v.dtype) - (frac <= -0.5).to(v.dtype)


def _div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """IEEE a / b elementwise. CUDA turns `tensor / python_float` into a multiplication by the
    reciprocal, which is not the division GGML does; dividing two tensors is exact."""
    like = a if isinstance(a, torch.Tensor) else b
    assert isinstance(like, torch.Tensor)
    a = a if isinstance(a, torch.Tensor) else torch.full_like(like, a)
    b = b if isinstance(b, torch.Tensor) else torch.full_like(like, b)
    return a / b


def _fp16_bytes(d: torch.Tensor) -> torch.Tensor:
    """(..., 1) float32 scales -> (..., 2) little-endian fp16 bytes (round to nearest even)."""
    return d.to(torch.float16).view(torch.uint8)


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    return x.to(torch.float32).reshape(*x.shape[:-1], x.shape[-1] // block, block)


def quantize(kind: str, x: torch.Tensor) -> torch.Tensor:
    """Rows of `x` (..., D) in format `kind`: uint8 (..., bytes_per_row) or a float16/32 copy."""
    fmt = get_format(kind)
    x = _check_float(x, "x")
    check_width(kind, x.shape[-1], argument="x")
    if not fmt.quantized:
        return x.to(fmt.dtype)
    xb = _blocks(x, fmt.block)
    lead = x.shape[:-1]
    if kind == "q8_0":
        amax = xb.abs().amax(dim=-1, keepdim=True)
        d = _div(amax, 127.0)
        inv = torch.where(d != 0, _div(1.0, d), torch.zeros_like(d))
        q = _roundf(xb * inv).to(torch.int8).view(torch.uint8)
        out = torch.cat((_fp16_bytes(d), q), dim=-1)
    elif kind == "q4_0":
        # The signed value of largest magnitude (first one on ties) maps to -8.
        imax = xb.abs().argmax(dim=-1, keepdim=True)
        d = _div(xb.gather(-1, imax), -8.0)
        inv = torch.where(d != 0, _div(1.0, d), torch.zeros_like(d))
        q = _trunc(xb * inv + 8.5).clamp(max=15).to(torch.uint8)
        packed = q[..., :16] | (q[..., 16:] << 4)
        out = torch.cat((_fp16_bytes(d), packed), dim=-1)
    else:  # nf4
        amax = xb.abs().amax(dim=-1, keepdim=True)
        n = torch.where(amax != 0, xb / amax, torch.zeros_like(xb))
        codebook = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=x.device)
        q = (n.unsqueeze(-1) - codebook).abs().argmin(dim=-1).to(torch.uint8)
        packed = q[..., :32] | (q[..., 32:] << 4)
        out = torch.cat((_fp16_bytes(amax), packed), dim=-1)
    return out.reshape(*lead, -1)


def dequantize(kind: str, blocks: torch.Tensor, D: int) -> torch.Tensor:
    """float32 (..., D) values of rows stored in format `kind`."""
    fmt = check_width(kind, D)
    if not isinstance(blocks, torch.Tensor):
        raise ValueError(f"blocks: expected a torch.Tensor, got {type(blocks).__name__}")
    if blocks.dtype != fmt.dtype:
        raise ValueError(f"blocks: a {kind} cache holds {fmt.dtype}, got {blocks.dtype}")
    if blocks.dim() < 1:
        raise ValueError("blocks: expected at least one dimension (the row), got a scalar")
    if logical_width(kind, blocks.shape[-1]) != D:
        raise ValueError(
            f"D: {D} does not match blocks of width {blocks.shape[-1]} "
            f"(= {logical_width(kind, blocks.shape[-1])} {kind} values)"
        )
    if not fmt.quantized:
        return blocks.to(torch.float32)
    lead = blocks.shape[:-1]
    b = blocks.reshape(*lead, D // fmt.block, fmt.block_bytes)
    scale = b[..., :2].contiguous().view(torch.float16).to(torch.float32)
    body = b[..., 2:]
    if kind == "q8_0":
        vals = body.contiguous().view(torch.int8).to(torch.float32)
    elif kind == "q4_0":
        codes = torch.cat((body & 0x0F, body >> 4), dim=-1)
        vals = codes.to(torch.float32) - 8.0
    else:  # nf4
        codes = torch.cat((body & 0x0F, body >> 4), dim=-1)
        codebook = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=blocks.device)
        vals = codebook[codes.long()]
    return (vals * scale).reshape(*lead, D)


def append(
    kind: str, cache: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Quantize one new token per sequence into `cache` at position lengths[b]; returns cache.

    cache (B, H, S_max, W) in format `kind`, rows (B, H, D) float, lengths int32 (B,). The caller
    advances `lengths` once every cache of the layer has its row.
    """
    fmt = get_format(kind)
    rows = _check_float(rows, "rows")
    if not isinstance(cache, torch.Tensor) or cache.dim() != 4:
        raise ValueError("cache: expected a (B, H, S_max, width) tensor")
    if cache.dtype != fmt.dtype:
        raise ValueError(f"cache: a {kind} cache holds {fmt.dtype}, got {cache.dtype}")
    B, H, S_max, W = cache.shape
    if rows.dim() != 3 or tuple(rows.shape[:2]) != (B, H):
        raise ValueError(f"rows: expected shape ({B}, {H}, D), got {tuple(rows.shape)}")
    D = rows.shape[-1]
    check_width(kind, D, argument="rows")
    if logical_width(kind, W, argument="cache") != D:
        raise ValueError(f"rows: width {D} does not match cache rows of width {W} in {kind}")
    _check_lengths(lengths, B, S_max - 1, minimum=0, what="a free slot (lengths < S_max)")
    pos = lengths.to(device=cache.device, dtype=torch.long)
    cache[torch.arange(B, device=cache.device), :, pos] = quantize(kind, rows).to(cache.device)
    return cache


def _check_lengths(
    lengths: object, B: int, maximum: int, *, minimum: int = 1, what: str = ""
) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"lengths: expected an int32 tensor, got {type(lengths).__name__}")
    if lengths.dtype != torch.int32:
        raise ValueError(f"lengths: expected dtype torch.int32, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {tuple(lengths.shape)}")
    if B:
        lo, hi = (int(v) for v in torch.aminmax(lengths))
        if lo < minimum or hi > maximum:
            purpose = f" for {what}" if what else ""
            raise ValueError(
                f"lengths: every length must lie in [{minimum}, {maximum}]{purpose}, "
                f"got values in [{lo}, {hi}]"
            )
    return lengths
