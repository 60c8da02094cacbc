"""ContextLookupDraft: copies the continuation of the newest n-gram's latest earlier
occurrence, follows cache rollbacks through ctx.position, and drafts for the speculative
generator without changing its greedy output."""

import pytest
import torch

from caramba.errors import InputError
from caramba.infer import (
    ContextLookupDraft,
    GenerateConfig,
    Generator,
    LookupAugmentedDraft,
    SpeculativeGenerator,
)
from caramba.infer.speculative import SpeculativeConfig
from caramba.layers.base import ForwardContext


def test_predict_prefers_the_longest_and_latest_match():
    d = ContextLookupDraft(100, max_ngram=3)
    assert d.predict([5, 6, 7, 9, 5, 6, 7]) == 9          # trigram 5 6 7 -> 9
    assert d.predict([1, 7, 2, 8, 7, 3, 5, 6, 7]) == 3     # no bigram 6 7 before: latest 7 -> 3
    assert d.predict([4, 1, 2, 9, 3, 1, 2, 8, 1, 2]) == 8  # latest of two 1 2 matches
    assert d.predict([1, 2, 3]) is None
    assert d.predict([]) is None and d.predict([4]) is None


def test_forward_puts_all_mass_on_the_copy_and_follows_rollbacks():
    d = ContextLookupDraft(16)
    ctx = ForwardContext(state={})
    logits = d(torch.tensor([[3, 4, 5, 3]]), ctx)
    assert logits.shape == (1, 4, 16)
    assert logits[0, -1].argmax() == 4 and torch.isinf(logits[0, -1]).sum() == 15
    assert (logits[0, :-1] == 0).all()  # only the last position is predicted
    ctx.position = 4
    assert d(torch.tensor([[4]]), ctx)[0, -1].argmax() == 5   # 3 4 -> 5
    ctx.position = 2  # a rollback: the history is 3 4 again
    out = d(torch.tensor([[9]]), ctx)[0, -1]
    assert (out == 0).all()  # 9 never occurred before: uniform
    with pytest.raises(InputError, match="one sequence"):
        d(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="min_ngram"):
        ContextLookupDraft(16, max_ngram=1, min_ngram=2)


def test_speculative_greedy_with_a_lookup_draft_equals_plain_greedy(standard_model, val_tokens):
    passage = val_tokens[:64].tolist()
    prompt = passage + passage[:6]  # the text again: a continuation can copy it
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=24, cache_kind="fp32")
    plain = Generator(standard_model, cfg).generate(prompt)
    vocab = standard_model(torch.tensor([prompt[:2]])).shape[-1]
    spec = SpeculativeGenerator(standard_model, ContextLookupDraft(vocab), cfg,
                                SpeculativeConfig(spec_k=4, warmup=100))
    assert torch.equal(spec.generate(prompt), plain)
    stats = spec.last_stats
    assert stats.proposed > 0 and stats.rounds > 0
    assert Generator(ContextLookupDraft(vocab), cfg).device == torch.device("cpu")


def test_augmented_draft_copies_where_it_can_and_defers_to_the_model_elsewhere(standard_model,
                                                                               val_tokens):
    prompt = val_tokens[:40].tolist()
    vocab = standard_model(torch.tensor([prompt[:2]])).shape[-1]
    both = LookupAugmentedDraft(standard_model, ContextLookupDraft(vocab, min_ngram=2))
    seen = prompt[:20] + prompt[10:12]  # ends in a bigram seen at 10..11: copy prompt[12]
    ctx = ForwardContext(state={})
    with torch.no_grad():
        out = both(torch.tensor([seen]), ForwardContext(state={}))
        alone = standard_model(torch.tensor([seen]), ctx)
    assert out[0, -1].argmax() == prompt[12] and torch.isinf(out[0, -1]).sum() == vocab - 1
    assert torch.equal(out[0, :-1], alone[0, :-1])
    fresh = [t for t in range(vocab) if t not in prompt][:3]
    with torch.no_grad():
        out = both(torch.tensor([prompt[:20] + fresh]), ForwardContext(state={}))
        alone = standard_model(torch.tensor([prompt[:20] + fresh]), ForwardContext(state={}))
    assert torch.equal(out, alone)  # no earlier bigram: the model's own proposal
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=16, cache_kind="fp32")
    spec = SpeculativeGenerator(standard_model, both, cfg, SpeculativeConfig(spec_k=3))
    assert torch.equal(spec.generate(prompt), Generator(standard_model, cfg).generate(prompt))
