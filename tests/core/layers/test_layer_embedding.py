"""Token embedder."""

import torch

from caramba.layers.embedding import TokenEmbedder
from caramba.registry import EMBEDDERS


def test_token_embedder_is_registered_and_maps_ids_to_vectors():
    cls = EMBEDDERS.get("token")
    assert cls is TokenEmbedder
    emb = cls.from_config(cls.Config(vocab_size=50, d_model=8), lambda c, i: None)
    tokens = torch.randint(0, 50, (2, 5))
    out = emb(tokens)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out[1, 3], emb.weight[tokens[1, 3]])


def test_token_embedder_init_is_gpt2_scale():
    torch.manual_seed(0)
    emb = TokenEmbedder(1000, 64)
    assert abs(emb.weight.std().item() - 0.02) < 0.002
