"""What each cache kind costs in prediction quality, on real held-out English, for a trained
standard (GQA) and a trained DBA model: logit error against exact fp32 decoding, delta NLL and
perplexity ratio against an fp16 cache, and the needle KL (`caramba.infer.quality`)."""

import pytest

from caramba.cache import CacheSpec
from caramba.infer.quality import Probe, QualityProbe, decode_logits

# kind: (max |delta NLL| nats, max |logit - fp32 logit|, max needle KL). Measured on this
# probe: q8_0 ~5e-5 nats / 0.025 / 1e-6; q4_0 and nf4 ~1e-3 nats / 0.4-0.9 / 1e-4.
BOUNDS = {
    "fp32": (1e-4, 1e-4, 1e-6),
    "fp16": (1e-3, 0.02, 1e-5),
    "q8_0": (5e-3, 0.1, 1e-4),
    "q4_0": (0.02, 2.0, 2e-3),
    "nf4": (0.02, 2.0, 2e-3),
}


@pytest.fixture(scope="module")
def probe(val_tokens):
    return Probe.from_tokens(val_tokens, batch=2, length=96, seed=1)


@pytest.fixture(scope="module")
def exact_logits(standard_model, probe):
    return decode_logits(standard_model, probe.text, CacheSpec(kind="fp32"), probe.prefill)


@pytest.mark.parametrize("which", ["standard", "dba"])
def test_each_kind_stays_within_its_quality_bounds_on_real_text(which, probe, request):
    model = request.getfixturevalue(f"{which}_model")
    reference = QualityProbe(model, probe, CacheSpec(kind="fp16"), exact=CacheSpec(kind="fp32"))
    assert reference.reference_nll < 7.0  # the model learned English (uniform would be 9.0)
    for kind, (max_dnll, max_logit, max_kl) in BOUNDS.items():
        kinds = {"k_sem": "fp16"} if (kind == "nf4" and which == "dba") else {}
        spec = CacheSpec(kind=kind, kinds=kinds)
        figures = reference.measure(spec)
        logit_error = figures.max_logit_error
        print(f"{which} {kind}: nll {figures.nll:.4f} dNLL {figures.delta_nll:+.5f} "
              f"ppl x{figures.ppl_ratio:.5f} needle KL {figures.needle_kl:.2e} "
              f"max logit error {logit_error:.4f}")
        assert abs(figures.delta_nll) <= max_dnll, (kind, figures)
        assert logit_error <= max_logit, (kind, logit_error)
        assert figures.needle_kl <= max_kl, (kind, figures)


def test_fewer_bits_cost_more_and_the_exact_tail_helps(standard_model, probe, exact_logits):
    """q8_0's logits are much closer to exact than q4_0's; and keeping the newest block in
    full precision (block_tokens 32) beats quantizing every token on arrival (0)."""
    error = {}
    for kind, block in (("q8_0", 32), ("q4_0", 32), ("q4_0", 0)):
        spec = CacheSpec(kind=kind, block_tokens=block)
        logits = decode_logits(standard_model, probe.text, spec, probe.prefill)
        error[kind, block] = (logits - exact_logits).abs().mean().item()
    assert error["q8_0", 32] * 4 < error["q4_0", 32] < error["q4_0", 0]
