"""Pruned-vocabulary drafts: the logits they present, exactness of greedy and sampled
speculative decoding with a draft whose q is zero outside its vocabulary, and the windows
of teacher-labelled data."""

import numpy as np
import pytest
import torch

from caramba.errors import InputError
from caramba.infer import GenerateConfig, Generator, SpeculativeGenerator, tiny
from caramba.infer.distill import LabelledTokens
from caramba.infer.draft import PrunedVocabModel
from caramba.infer.speculative import SpeculativeConfig
from caramba.models.language_model import LanguageModelSystem

KEEP = 1024


def pruned(val_tokens, keep=KEEP, seed=0, exclude=()) -> PrunedVocabModel:
    """An untrained 1-block draft over the `keep` most frequent held-out tokens."""
    counts = torch.bincount(val_tokens, minlength=8192)
    counts[list(exclude)] = -1
    ids = torch.argsort(counts, descending=True, stable=True)[:keep]
    torch.manual_seed(seed)
    cfg = tiny.TinyConfig(d_model=32, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=64,
                          vocab_size=keep + 1, head_vocab=keep)
    return PrunedVocabModel(LanguageModelSystem.build(tiny.definition(cfg)), ids, 8192).eval()


def test_pruned_logits_are_the_inner_models_on_kept_tokens_and_minus_inf_elsewhere(val_tokens):
    draft = pruned(val_tokens)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        T = int(torch.randint(1, 40, (1,), generator=g))
        x = torch.randint(0, 8192, (2, T), generator=g)
        with torch.no_grad():
            full = draft(x)
            inner = draft.inner(draft.to_inner(x))
        assert full.shape == (2, T, 8192)
        assert torch.equal(full[..., draft.keep], inner)
        outside = torch.ones(8192, dtype=torch.bool)
        outside[draft.keep] = False
        assert torch.isneginf(full[..., outside]).all()
    unknown = int(torch.nonzero(draft.index == KEEP)[0])
    assert int(draft.to_inner(torch.tensor([unknown]))) == KEEP
    labels = draft.labels(torch.tensor([int(draft.keep[3]), unknown]))
    assert labels.tolist() == [3, -100]


def test_greedy_speculative_with_a_pruned_draft_is_the_targets_greedy_output(
        standard_model, english, val_tokens):
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=20, cache_kind="fp32")
    draft = pruned(val_tokens)
    for text in ["And God said unto Moses,", "KING HENRY. Now"]:
        prompt = english.tokenizer.encode(text)
        spec = SpeculativeGenerator(standard_model, draft, cfg,
                                    SpeculativeConfig(spec_k=3, disable_below=0.0))
        assert torch.equal(spec.generate(prompt), Generator(standard_model, cfg).generate(prompt))
        assert spec.last_stats.rounds > 0


def test_sampled_speculative_decoding_with_a_pruned_draft_matches_the_target(standard_model,
                                                                             english,
                                                                             val_tokens):
    """One sampled token with top_k 4: 600 speculative draws against the target's exact
    probabilities; the draft cannot propose some of the target's candidates."""
    prompt = english.tokenizer.encode("The king")
    cfg = GenerateConfig(temperature=1.0, top_k=4, max_new_tokens=1, cache_kind="fp32")
    from caramba.infer.sampling import probabilities

    with torch.no_grad():
        p = probabilities(standard_model(torch.tensor([prompt]))[:, -1], cfg)[0]
    support = p.nonzero()[:, 0].tolist()
    draft = pruned(val_tokens, keep=64, exclude=support[:1])
    assert int(draft.index[support[0]]) == 64  # a candidate the draft can never propose
    n = 600
    counts = dict.fromkeys(support, 0)
    for seed in range(n):
        spec = SpeculativeGenerator(standard_model, draft, cfg.replace(seed=seed),
                                    SpeculativeConfig(spec_k=1, adaptive=False))
        counts[int(spec.generate(prompt)[0, -1])] += 1
    chi2 = sum((counts[t] - n * p[t].item()) ** 2 / (n * p[t].item()) for t in support)
    assert chi2 < 16.3, (counts, p[support])  # 3 d.o.f., p-value 0.001


def test_bad_keep_lists(val_tokens):
    inner = pruned(val_tokens).inner
    with pytest.raises(InputError, match="distinct"):
        PrunedVocabModel(inner, torch.tensor([1, 1]), 8192)
    with pytest.raises(InputError, match=r"\[0, 8192\)"):
        PrunedVocabModel(inner, torch.tensor([5, 9000]), 8192)


def test_labelled_windows_pair_each_input_with_its_label():
    inputs = np.arange(100, dtype=np.int64)
    labels = inputs * 10
    data = LabelledTokens(inputs, labels, "test")
    x, y = data.batch(4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and torch.equal(y, x * 10)
    batches = list(data.iter_eval_batches(2, 16, max_batches=2))
    assert [b[0][:, 0].tolist() for b in batches] == [[0, 16], [32, 48]]
    with pytest.raises(Exception, match="fewer than block_size"):
        data.batch(1, 200, torch.Generator())
