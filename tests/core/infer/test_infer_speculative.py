"""Speculative decoding: greedy output equals the target's, rejection sampling keeps the
target's distribution, spec_k adapts, low acceptance falls back, caches roll back."""

import pytest
import torch

from caramba.errors import InputError
from caramba.infer import GenerateConfig, Generator, SpeculativeGenerator, tiny
from caramba.infer.config import ConfigError
from caramba.infer.speculative import CostModel, SpeculativeConfig, accept_drafts, best_k

PROMPTS = ["And God said unto Moses,", "ROMEO. What light", "The king"]


@pytest.fixture(scope="module")
def draft_model(english):
    return tiny.tiny_model(tiny.DRAFT, data=english)


def greedy(**changes):
    return GenerateConfig(**{"temperature": 0.0, "max_new_tokens": 24, "cache_kind": "fp32",
                             **changes})


@pytest.mark.parametrize("which", ["standard", "dba"])
def test_greedy_speculative_output_is_the_targets_greedy_output(which, draft_model, english,
                                                                request):
    target = request.getfixturevalue(f"{which}_model")
    for text in PROMPTS:
        prompt = english.tokenizer.encode(text)
        ref = Generator(target, greedy()).generate(prompt)
        spec = SpeculativeGenerator(target, draft_model, greedy())
        assert torch.equal(spec.generate(prompt), ref), text
        stats = spec.last_stats
        assert stats.rounds > 0 and stats.new_tokens == 24
        assert 0.0 <= stats.acceptance_rate <= 1.0


def test_a_perfect_draft_is_always_accepted_and_spec_k_grows(standard_model, english):
    prompt = english.tokenizer.encode(PROMPTS[0])
    spec = SpeculativeGenerator(standard_model, standard_model, greedy(max_new_tokens=40),
                                SpeculativeConfig(spec_k=2, cost_ratio=0.05))
    out = spec.generate(prompt)
    assert torch.equal(out, Generator(standard_model, greedy(max_new_tokens=40)).generate(prompt))
    stats = spec.last_stats
    assert stats.acceptance_rate == 1.0
    assert stats.spec_k_history[:4] == [2, 8, 8, 8]  # cheap, always right: draft the most
    assert stats.rounds <= 6


def test_low_acceptance_falls_back_to_plain_decoding(standard_model, english):
    torch.manual_seed(5)
    from caramba.models.language_model import LanguageModelSystem

    untrained = LanguageModelSystem.build(tiny.definition(tiny.DRAFT)).eval()
    prompt = english.tokenizer.encode(PROMPTS[1])
    spec = SpeculativeGenerator(standard_model, untrained, greedy(max_new_tokens=30))
    out = spec.generate(prompt)
    assert torch.equal(out, Generator(standard_model, greedy(max_new_tokens=30)).generate(prompt))
    assert spec.last_stats.fell_back_at is not None
    assert spec.last_stats.acceptance_rate < 0.3


def test_caches_are_rolled_back_to_the_accepted_prefix(standard_model, draft_model, english):
    prompt = english.tokenizer.encode(PROMPTS[2])
    spec = SpeculativeGenerator(standard_model, draft_model, greedy(cache_kind="q8_0"))
    seen = []
    original = spec.target.cache_spec

    def record(batch, capacity):
        s = original(batch, capacity)
        seen.append(s)
        return s

    spec.target.cache_spec = record
    out = spec.generate(prompt)
    # The target holds every token but the newest one, which was never fed back.
    assert seen[0].length == out.shape[1] - 1
    assert spec.last_stats.accepted < spec.last_stats.proposed  # something was rolled back


@pytest.mark.parametrize("draft_vocab", [6, 3])
def test_accept_drafts_preserves_the_target_distribution(draft_vocab):
    """200k independent rounds on a 6-token vocabulary: the first emitted token follows p_0,
    and after an accepted first draft the second follows p_1 (rejection sampling is exact),
    also when the draft covers only part of the vocabulary (q zero elsewhere, as a pruned
    draft's)."""
    g = torch.Generator().manual_seed(0)
    V, k, N = 6, 3, 200_000
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    q[:, draft_vocab:] = 0
    q = q / q.sum(-1, keepdim=True)
    drafts = torch.stack([torch.multinomial(q[i], N, replacement=True, generator=g)
                          for i in range(k)], dim=1)
    accepted, nxt = accept_drafts(p.expand(N, -1, -1), q.expand(N, -1, -1), drafts, g)
    first = torch.where(accepted > 0, drafts[:, 0], nxt)
    freq = torch.bincount(first, minlength=V).float() / N
    chi2 = (N * (freq - p[0]) ** 2 / p[0]).sum().item()
    assert chi2 < 25.0, (freq, p[0])  # chi-square, 5 d.o.f.: p-value ~1e-4
    kept = accepted >= 1
    second = torch.where(accepted[kept] > 1, drafts[kept, 1], nxt[kept])
    n2 = int(kept.sum())
    freq2 = torch.bincount(second, minlength=V).float() / n2
    chi2 = (n2 * (freq2 - p[1]) ** 2 / p[1]).sum().item()
    assert chi2 < 25.0, (freq2, p[1])
    # Acceptance matches its expectation, sum_x min(p(x), q(x)).
    expected = torch.minimum(p[0], q[0]).sum().item()
    assert abs((accepted > 0).float().mean().item() - expected) < 0.01


def test_speculative_sampling_matches_the_target_on_real_models(standard_model, draft_model,
                                                                english):
    """Two sampled tokens with top_k 3: nine possible outcomes whose exact probabilities the
    target defines; 800 speculative runs must not be distinguishable from them."""
    prompt = english.tokenizer.encode("The king")
    cfg = GenerateConfig(temperature=1.0, top_k=3, max_new_tokens=2, cache_kind="fp32", seed=0)
    from caramba.infer.sampling import probabilities

    with torch.no_grad():
        p1 = probabilities(standard_model(torch.tensor([prompt]))[:, -1], cfg)[0]
        support = p1.nonzero()[:, 0].tolist()
        exact = {}
        for a in support:
            p2 = probabilities(standard_model(torch.tensor([prompt + [a]]))[:, -1], cfg)[0]
            for b in p2.nonzero()[:, 0].tolist():
                exact[a, b] = (p1[a] * p2[b]).item()
    counts = dict.fromkeys(exact, 0)
    n = 800
    for seed in range(n):
        spec = SpeculativeGenerator(standard_model, draft_model, cfg.replace(seed=seed),
                                    SpeculativeConfig(spec_k=2, adaptive=False))
        a, b = spec.generate(prompt)[0, -2:].tolist()
        counts[a, b] += 1
    chi2 = sum((counts[o] - n * p) ** 2 / (n * p) for o, p in exact.items() if n * p >= 1)
    dof = sum(1 for p in exact.values() if n * p >= 1) - 1
    # p-value > 0.001 for chi-square with dof degrees of freedom (dof <= 8: bound 26.1).
    assert chi2 < 26.1, (counts, exact)
    assert dof >= 2
    assert set(counts) == set(exact)  # nothing outside the target's support was produced


def test_best_k_prefers_long_drafts_when_acceptance_is_high_and_drafts_are_cheap():
    assert best_k(0.9, 0.05, 1, 8) == 8
    assert best_k(0.2, 0.5, 1, 8) == 1
    assert 1 < best_k(0.7, 0.2, 1, 8) < 8


def test_bad_speculative_settings(standard_model, draft_model):
    with pytest.raises(ConfigError, match="repetition_penalty 1.0"):
        SpeculativeGenerator(standard_model, draft_model, greedy(repetition_penalty=1.2))
    with pytest.raises(ConfigError, match="spec_k_min <= spec_k <= spec_k_max"):
        SpeculativeConfig(spec_k=9)
    spec = SpeculativeGenerator(standard_model, draft_model, greedy())
    with pytest.raises(InputError, match="one prompt at a time"):
        spec.generate(torch.zeros(2, 3, dtype=torch.long))


def test_best_k_pays_for_longer_verify_passes():
    """On a CPU a pass over k + 1 tokens costs more than one: spec_k shrinks accordingly."""
    flat = best_k(0.7, 0.05, 1, 8, verify_cost=lambda k: 1.0)
    growing = best_k(0.7, 0.05, 1, 8, verify_cost=lambda k: 1.0 + 0.5 * k)
    assert flat > growing >= 1


def test_cost_model_estimates_per_token_acceptance_and_borrows_unseen_verify_times():
    costs = CostModel(ema=1.0)  # the newest round only
    costs.update(k=4, accepted=2, draft_s=0.4, verify_s=1.0)
    assert costs.alpha == pytest.approx(2 / 3)  # two successes, then one miss
    assert costs.draft_s == pytest.approx(0.1)
    costs.update(k=4, accepted=4, draft_s=0.4, verify_s=1.0)
    assert costs.alpha == 1.0  # every draft accepted: no miss observed
    costs.update(k=2, accepted=0, draft_s=0.2, verify_s=0.5)
    assert costs.verify(2) == 0.5 and costs.verify(3) == 0.5 and costs.verify(7) == 1.0
