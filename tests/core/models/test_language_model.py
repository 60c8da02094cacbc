"""LanguageModel and the system.language_model builder."""

from types import SimpleNamespace

import pytest
import torch

from caramba.layers.attention import AttentionLayer
from caramba.layers.base import ForwardContext
from caramba.layers.embedding import TokenEmbedder
from caramba.layers.glu import SwiGLULayer
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.models.language_model import TiedEmbeddingsError, sample_next
from caramba.registry import SYSTEMS
from caramba.topologies.cyclic import CyclicTopology
from caramba.topologies.nested import NestedTopology
from caramba.topologies.residual import ResidualTopology
from caramba.topologies.stacked import StackedTopology

V, D, H, KV, FF, L = 61, 32, 4, 2, 48, 3


def llama_spec(tie=False, n_layers=L, head=None):
    block = (
        ResidualTopology.Config(
            layers=(
                RMSNormLayer.Config(d_model=D),
                AttentionLayer.Config(d_model=D, n_heads=H, n_kv_heads=KV, mode="gqa"),
            )
        ),
        ResidualTopology.Config(
            layers=(RMSNormLayer.Config(d_model=D), SwiGLULayer.Config(d_model=D, d_ff=FF))
        ),
    )
    topology = StackedTopology.Config(
        layers=(
            NestedTopology.Config(layers=block, repeat=n_layers),
            RMSNormLayer.Config(d_model=D),
            head or LinearLayer.Config(d_in=D, d_out=V),
        )
    )
    return SimpleNamespace(
        embedder=TokenEmbedder.Config(vocab_size=V, d_model=D),
        topology=topology,
        tie_embeddings=tie,
    )


def build(spec):
    return SYSTEMS.get("system.language_model").build(spec)


def test_logits_shape():
    model = build(llama_spec())
    assert model(torch.randint(0, V, (2, 7))).shape == (2, 7, V)


@pytest.mark.parametrize("tie", [False, True])
def test_parameter_count_matches_llama_formula(tie):
    head_dim = D // H
    attention = D * H * head_dim + 2 * D * KV * head_dim + H * head_dim * D
    block = 2 * D + attention + 3 * D * FF
    expected = V * D + L * block + D + (0 if tie else V * D)
    assert sum(p.numel() for p in build(llama_spec(tie)).parameters()) == expected


def test_tied_head_shares_storage_with_the_embedding():
    model = build(llama_spec(tie=True))
    head = model.topology.layers[-1]
    assert head.weight is model.embedder.weight
    assert head.weight.data_ptr() == model.embedder.weight.data_ptr()
    with torch.no_grad():
        model.embedder.weight[0, 0] = 123.0
    assert head.weight[0, 0] == 123.0


@pytest.mark.parametrize(
    "head", [LinearLayer.Config(d_in=D, d_out=V + 1), RMSNormLayer.Config(d_model=D)]
)
def test_tie_embeddings_needs_a_matching_final_linear(head):
    with pytest.raises(TiedEmbeddingsError, match=rf"d_in == d_model \({D}\).*vocab_size \({V}\)"):
        build(llama_spec(tie=True, head=head))


def test_incremental_decoding_logits_equal_full_forward():
    torch.manual_seed(0)
    model = build(llama_spec()).eval()
    tokens = torch.randint(0, V, (2, 9))
    full = model(tokens)
    ctx = ForwardContext(state={})
    logits = [model(tokens[:, :5], ctx)]
    for t in range(5, 9):
        ctx.position = t
        logits.append(model(tokens[:, t : t + 1], ctx))
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generate_matches_argmax_of_full_forward():
    torch.manual_seed(0)
    model = build(llama_spec()).eval()
    prompt = torch.randint(0, V, (2, 4))
    out = model.generate(prompt, max_new_tokens=5, temperature=0.0)
    assert out.shape == (2, 9)
    assert torch.equal(out[:, :4], prompt)
    full = model(out[:, :-1])
    assert torch.equal(full[:, 3:].argmax(-1), out[:, 4:])


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k():
    model = build(llama_spec()).eval()
    prompt = torch.randint(0, V, (1, 3))
    runs = [
        model.generate(prompt, 6, temperature=1.0, top_k=5,
                       generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    logits = torch.arange(10.0).repeat(100, 1)
    picks = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator())
    assert set(picks.flatten().tolist()) <= {8, 9}


def test_cyclic_body_decodes_incrementally():
    torch.manual_seed(0)
    spec = llama_spec()
    nested = spec.topology.layers[0]
    spec.topology = spec.topology.model_copy(
        update={"layers": (CyclicTopology.Config(layers=nested.layers, cycles=2),
                           *spec.topology.layers[1:])}
    )
    model = build(spec).eval()
    tokens = torch.randint(0, V, (1, 6))
    out = model.generate(tokens[:, :3], 3, temperature=0.0)
    assert torch.equal(model(out[:, :-1])[:, 2:].argmax(-1), out[:, 3:])


def test_builds_and_runs_on_the_meta_device_for_shape_checks():
    with torch.device("meta"):
        model = build(llama_spec(tie=True))
    assert model(torch.zeros(1, 8, dtype=torch.long, device="meta")).shape == (1, 8, V)


def test_runs_in_bfloat16():
    model = build(llama_spec()).to(torch.bfloat16)
    assert model(torch.randint(0, V, (1, 5))).dtype == torch.bfloat16
