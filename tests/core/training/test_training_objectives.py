"""Next-token cross-entropy: mean over all positions, in float32."""

import math

import torch
import torch.nn.functional as F

from caramba.registry import OBJECTIVES
from caramba.training.objectives import NextTokenCrossEntropy


def test_matches_flattened_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    loss = NextTokenCrossEntropy()(logits, targets)
    assert torch.equal(loss, F.cross_entropy(logits.view(10, 11), targets.view(10)))


def test_uniform_logits_give_log_vocab_and_low_precision_is_upcast() -> None:
    logits = torch.zeros(3, 4, 256, dtype=torch.bfloat16)
    loss = NextTokenCrossEntropy()(logits, torch.zeros(3, 4, dtype=torch.long))
    assert loss.dtype is torch.float32
    assert math.isclose(loss.item(), math.log(256), rel_tol=1e-6)


def test_registered_under_its_manifest_name() -> None:
    assert OBJECTIVES.get("objective.next_token_ce") is NextTokenCrossEntropy
