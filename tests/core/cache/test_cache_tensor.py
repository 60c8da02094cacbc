"""CacheTensor: storage per kind, geometric growth, the exact tail, layouts, rollback and
exact memory accounting."""

import pytest
import torch

from caramba.cache import CacheKindError, CacheTensor, DecodePlan
from caramba.kernels import quant

KINDS = ["fp32", "fp16", "q8_0", "q4_0", "nf4"]
FORMAT = {"fp32": "f32", "fp16": "f16", "q8_0": "q8_0", "q4_0": "q4_0", "nf4": "nf4"}


def roundtrip(kind, x):
    """What a quantized store gives back for x (B, H, T, D), per-head rows."""
    fmt = FORMAT[kind]
    return quant.dequantize(fmt, quant.quantize(fmt, x), x.shape[-1])


@pytest.mark.parametrize("kind, per_token", [("fp32", 512), ("fp16", 256), ("q8_0", 136),
                                             ("q4_0", 72), ("nf4", 68)])
def test_bytes_per_token_and_nbytes_are_exact(kind, per_token):
    t = CacheTensor(kind, 3, 2, 64, capacity=100)
    assert t.bytes_per_token == per_token
    t.append(torch.randn(3, 2, 40, 64))
    expected = t.storage.nbytes + t.tail.nbytes + t.prev_block.nbytes
    assert t.nbytes == expected
    assert t.storage.nbytes == 3 * t.capacity * per_token


def test_plain_kinds_store_values_and_grow_geometrically():
    torch.manual_seed(0)
    t = CacheTensor("fp32", 1, 2, 8)
    xs = [torch.randn(1, 2, 1, 8) for _ in range(1000)]
    for x in xs:
        t.append(x)
    assert torch.equal(t.read(), torch.cat(xs, dim=2))
    assert t.length == 1000 and t.capacity >= 1000
    assert t.reallocations <= 6  # 64 -> 128 -> ... -> 1024: doubling, not per token


def test_fp16_rounds_to_half():
    x = torch.randn(2, 2, 5, 8)
    t = CacheTensor("fp16", 2, 2, 8)
    t.append(x)
    assert torch.equal(t.read(torch.float32), x.half().float())


def test_capacity_follows_the_decode_plan_buckets():
    t = CacheTensor("fp32", 1, 1, 8, plan=DecodePlan("auto"))
    caps = set()
    for _ in range(700):
        t.append(torch.randn(1, 1, 1, 8))
        caps.add(t.capacity)
    assert caps <= {64, 96, 128, 192, 256, 384, 512, 768, 1024}


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "nf4"])
def test_quantized_kinds_keep_the_partial_block_exact(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 70, 64)
    t = CacheTensor(kind, 2, 2, 64, block_tokens=32)
    t.append(x[:, :, :5])
    t.append(x[:, :, 5:40])
    t.append(x[:, :, 40:70])
    assert (t.stored, t.pending) == (64, 6)
    # Full blocks hold exactly the reference quantization's bytes; the tail is exact.
    assert torch.equal(t.storage[:, :, :64], quant.quantize(FORMAT[kind], x[:, :, :64]))
    expected = torch.cat((roundtrip(kind, x[:, :, :64]), x[:, :, 64:]), dim=2)
    assert torch.equal(t.read(), expected)
    # The kernels read the 64 stored tokens; `recent` gives any later span exactly.
    assert t.kernel_ready
    assert torch.equal(t.recent(64), x[:, :, 64:])
    assert torch.equal(t.recent(40), expected[:, :, 40:])
    assert t.recent(70).shape == (2, 2, 0, 64)


def test_without_a_tail_every_token_is_quantized_on_arrival():
    x = torch.randn(1, 2, 3, 64)
    t = CacheTensor("q8_0", 1, 2, 64, block_tokens=0)
    t.append(x)
    assert (t.stored, t.pending) == (3, 0) and t.kernel_ready
    assert torch.equal(t.read(), roundtrip("q8_0", x))


def test_narrow_heads_use_rows_that_span_all_heads():
    """DBA's per-head semantic keys (here 8 heads x 4 values) are narrower than a block: the
    row of a token spans all heads, so 32 values make one q8_0 block."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 40, 4)
    t = CacheTensor("q8_0", 2, 8, 4, block_tokens=32)
    assert t.layout == "token" and t.bytes_per_token == 34
    t.append(x)
    rows = x.transpose(1, 2).reshape(2, 40, 32)
    deq = quant.dequantize("q8_0", quant.quantize("q8_0", rows[:, :32]), 32)
    expected = torch.cat((deq.reshape(2, 32, 8, 4).transpose(1, 2), x[:, :, 32:]), dim=2)
    assert torch.equal(t.read(), expected)


def test_recent_reads_token_layout_storage_and_the_tail():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 45, 4)
    t = CacheTensor("q4_0", 1, 8, 4, block_tokens=32)
    t.append(x)
    assert (t.layout, t.stored, t.kernel_ready) == ("token", 32, True)
    assert torch.equal(t.recent(10), t.read()[:, :, 10:])
    with pytest.raises(ValueError, match=r"start 46 outside \[0, 45\]"):
        t.recent(46)


@pytest.mark.parametrize("kind", KINDS)
def test_narrow_heads_take_the_token_layout_in_every_kind(kind):
    """Per-head rows of a few values waste the kernels' SIMD lanes; wide heads stay per head,
    and one head is the same either way."""
    assert CacheTensor(kind, 1, 8, 8).layout == "token"
    assert CacheTensor(kind, 1, 8, 64).layout == "head"
    assert CacheTensor(kind, 1, 1, 64).layout == "head"
    x = torch.randn(1, 8, 5, 8)
    t = CacheTensor(kind, 1, 8, 8, block_tokens=0)
    t.append(x)
    if kind in ("fp32", "fp16"):
        assert torch.equal(t.read(), x.to(t.fmt.dtype).float())


def test_unstorable_width_is_a_clear_error():
    with pytest.raises(CacheKindError, match=r"1 head\(s\) x 16 = 16 values"):
        CacheTensor("q8_0", 1, 1, 16)
    with pytest.raises(CacheKindError, match="unknown cache kind 'q8'"):
        CacheTensor("q8", 1, 1, 32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", [69, 64, 50, 33, 20])
def test_truncate_then_append_equals_appending_the_kept_prefix(kind, cut):
    """Rollback inside the tail, across one block (exact copy restored) or further back
    (dequantized values) always leaves what appending the prefix would have left — except
    that rows older than the exact copy stay as their quantized values."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 70, 64)
    extra = torch.randn(1, 2, 30, 64)
    t = CacheTensor(kind, 1, 2, 64, block_tokens=32)
    t.append(x)
    t.truncate(cut)
    assert t.length == cut
    t.append(extra)
    ref = CacheTensor(kind, 1, 2, 64, block_tokens=32)
    ref.append(x[:, :, :cut])
    ref.append(extra)
    if kind in ("fp32", "fp16") or cut >= 32:
        assert torch.equal(t.read(), ref.read())
    else:
        # Rolled back past the exact copy: rows cut//32*32 .. cut come back dequantized.
        torch.testing.assert_close(t.read(), ref.read(), atol=0.3, rtol=0.1)


def test_truncate_out_of_range_raises():
    t = CacheTensor("fp32", 1, 1, 8)
    t.append(torch.randn(1, 1, 3, 8))
    with pytest.raises(ValueError, match="cannot truncate 3 tokens to 4"):
        t.truncate(4)


def test_max_len_bounds_the_cache():
    t = CacheTensor("fp32", 1, 1, 8, max_len=10)
    t.append(torch.randn(1, 1, 10, 8))
    assert t.capacity == 10
    with pytest.raises(ValueError, match="exceed the cache's max_len 10"):
        t.append(torch.randn(1, 1, 1, 8))


def test_gradients_flow_through_a_plain_cache():
    x = torch.randn(1, 2, 4, 8, requires_grad=True)
    t = CacheTensor("fp32", 1, 2, 8)
    t.append(x[:, :, :2])
    t.append(x[:, :, 2:])
    t.read().sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
