"""Whole-step decode graphs: a staged step (token written and attended at a device-side
position, bookkeeping after) computes what the eager step computes, for every cache scheme
it serves; the Generator replays it as a CUDA graph where it can and stays eager elsewhere."""

import pytest
import torch

from caramba.cache.spec import CacheSpec
from caramba.infer import GenerateConfig, Generator
from caramba.infer.generate import prefill
from caramba.infer.step_graph import StepGraph, staged_step
from caramba.layers.base import ForwardContext

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def decode_pair(model, tokens, kind, steps, device="cpu", modes=(False, True)):
    """Greedy-decode `steps` tokens after `tokens` twice from one prefill state: eagerly and
    through staged steps (`modes`: which of the two). Returns ((logits, spec, context) of each
    mode)."""
    runs = []
    for staged in modes:
        spec = CacheSpec(kind=kind, capacity=tokens.shape[1] + steps + 1)
        ctx = spec.context()
        with torch.no_grad():
            logits = prefill(model, tokens, ctx, spec.plan)
            seen = []
            for _ in range(steps):
                token = logits.argmax(-1, keepdim=True)
                if staged:
                    assert all(cache.stage_ready() for cache in spec.caches)
                    logits = staged_step(model, token, ctx, spec)[:, -1]
                else:
                    logits = model(token, ctx)[:, -1]
                    ctx.position += 1
                seen.append(logits.clone())
        runs.append((torch.stack(seen), spec, ctx))
    return runs


@pytest.mark.parametrize("which", ["standard", "dba"])
@pytest.mark.parametrize("kind", ["fp32", "fp16", "q8_0", "q4_0"])
def test_staged_steps_equal_eager_steps(which, kind, val_tokens, request):
    model = request.getfixturevalue(f"{which}_model")
    tokens = val_tokens[None, :45]  # more than one 32-token block: quantized kinds store one
    (eager, e_spec, e_ctx), (staged, s_spec, s_ctx) = decode_pair(model, tokens, kind, 40)
    assert s_ctx.position == e_ctx.position == 85
    for a, b in zip(e_spec.caches, s_spec.caches, strict=True):
        for ta, tb in zip(a.tensors, b.tensors, strict=True):
            assert (tb.length, tb.stored) == (ta.length, ta.stored)  # blocks flushed alike
            # The prompt's first block is stored from identical values; later tokens' keys
            # and values differ in float rounding (see below), which can move a value by one
            # quantization step here and there: compare those on average.
            assert torch.equal(tb.storage[:, :, :32], ta.storage[:, :, :32])
            assert (tb.read() - ta.read()).abs().mean() < 1e-3
    # The paths merge the exact tail in different float32 orders, so they agree to float
    # rounding until a decoded token fills a block (position 63): the eager step quantizes the
    # block before attending, the staged one attends it exactly and quantizes after. From
    # there the two differ by quantization error (token 63's keys in later layers, hence
    # their quantized bytes, differ a little); plain kinds stay identical throughout.
    fill = next(i for i in range(eager.shape[0]) if (45 + i + 1) % 32 == 0)
    assert fill == 18
    assert torch.allclose(staged[:fill], eager[:fill], atol=1e-5, rtol=1e-5)
    if kind in ("fp32", "fp16"):
        assert torch.equal(staged, eager)
    else:
        # "Differ by quantization error": no more than twice what quantizing the cache moves
        # the logits by (against an fp32 cache) over the same run. A fixed bound would depend
        # on the tiny model's weights, which differ from one CPU to another (on one Zen 3
        # host: q4_0 gaps of 0.18-0.25 against the quantization's own 0.23-0.26).
        ((exact, _, _),) = decode_pair(model, tokens, "fp32", 40, modes=(False,))
        quantization = (eager - exact).abs().max()
        assert (staged - eager).abs().max() <= 2 * quantization
    assert torch.equal(staged.argmax(-1), eager.argmax(-1))


def test_a_quantized_cache_with_no_stored_block_is_not_stage_ready(standard_model, val_tokens):
    spec = CacheSpec(kind="q8_0", capacity=64)
    ctx = spec.context()
    with torch.no_grad():
        prefill(standard_model, val_tokens[None, :20], ctx, spec.plan)
    assert not any(cache.stage_ready() for cache in spec.caches)
    spec = CacheSpec(kind="q8_0", kinds={"k": "fp16"}, capacity=64)  # mixed: no one tail
    ctx = spec.context()
    with torch.no_grad():
        prefill(standard_model, val_tokens[None, :40], ctx, spec.plan)
    assert not any(cache.stage_ready() for cache in spec.caches)


def test_a_staged_step_needs_the_prefilled_caches(standard_model):
    spec = CacheSpec(kind="fp32", capacity=8)
    ctx = spec.context()
    spec.caches.append(None)  # any cache list: the layers look theirs up in ctx.state
    spec.caches.clear()
    with pytest.raises(RuntimeError, match="prefill"):
        position = torch.zeros((), dtype=torch.long)
        from caramba.layers.base import DeviceStep

        standard_model(torch.zeros(1, 1, dtype=torch.long),
                       ForwardContext(state={}, step=DeviceStep(position, 8)))
    assert ctx.position == 0


def test_step_graph_is_eager_off_cuda_and_for_unsafe_modules(standard_model, val_tokens):
    steps = StepGraph(standard_model)
    assert steps.unsafe == []
    spec = CacheSpec(kind="fp32", capacity=64)
    ctx = spec.context()
    with torch.no_grad():
        logits = prefill(standard_model, val_tokens[None, :10], ctx, spec.plan)
        for _ in range(3):
            logits = steps(logits.argmax(-1, keepdim=True), ctx, spec)[:, -1]
    assert (steps.eager_steps, steps.replays, ctx.position) == (3, 0, 13)

    class Unsafe(torch.nn.Module):
        device_step_unsafe = True

    wrapped = torch.nn.Sequential(Unsafe())
    assert StepGraph(wrapped).unsafe == ["Unsafe"]


def test_generate_config_cuda_graphs_is_a_bool():
    from caramba.infer.config import ConfigError

    assert GenerateConfig(cuda_graphs=False).cuda_graphs is False
    with pytest.raises(ConfigError, match="cuda_graphs"):
        GenerateConfig(cuda_graphs="yes")


@CUDA
@pytest.mark.parametrize("which", ["standard", "dba"])
@pytest.mark.parametrize("kind", ["fp16", "q8_0", "q4_0"])
def test_cuda_generator_replays_whole_steps_and_matches_eager(which, kind, val_tokens, request):
    model = request.getfixturevalue(f"{which}_model").to("cuda")
    prompt = val_tokens[:45].tolist()
    outs = {}
    for graphs in (True, False):
        gen = Generator(model, GenerateConfig(temperature=0.0, max_new_tokens=48,
                                              cache_kind=kind, cuda_graphs=graphs))
        outs[graphs] = gen.generate(prompt)
        if graphs:
            # 47 decode steps; one capture (pre-sized caches), the rest replays.
            assert (gen.step_graph.captures, gen.step_graph.replays) == (1, 47)
        else:
            assert gen.step_graph.replays == 0
    model.to("cpu")
    assert torch.equal(outs[True], outs[False])
