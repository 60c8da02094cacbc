"""cache_kind auto: budget filter, quality gates on real text, micro-benchmark, persisted plans
(reuse, staleness, key changes, corrupt files), per-path fallbacks for DBA."""

import json
import logging

import pytest
import torch

from caramba.infer import GenerateConfig, Generator, cache_plan
from caramba.infer.cache_plan import CacheBudgetError, PlanStore, candidates

PROMPT = [11, 22, 33, 44, 55]


def auto(tmp_path=None, **changes):
    base = {"cache_kind": "auto", "temperature": 0.0, "max_new_tokens": 4,
            "cache_auto_benchmark": False, "probe_tokens": 48, "probe_batch": 1}
    if tmp_path is not None:
        base["cache_plan_path"] = str(tmp_path / "plans.json")
    return GenerateConfig(**{**base, **changes})


def test_decision_is_queryable_with_every_candidates_figures(standard_model, val_tokens):
    gen = Generator(standard_model, auto(), probe=val_tokens)
    gen.generate(PROMPT)
    d = gen.cache_decision
    assert d.source == "probe" and d.kind in ("q8_0", "q4_0", "nf4", "fp16", "fp32")
    labels = [c.label for c in d.candidates]
    assert labels == ["fp32", "fp16", "q8_0", "q8_0 no-tail", "q4_0", "q4_0 no-tail", "nf4",
                      "nf4 no-tail"]
    for c in d.candidates:
        assert c.bytes_per_token > 0 and c.passed is not None
        if c.kind in ("q8_0", "q4_0", "nf4"):
            assert set(c.quality) >= {"delta_nll", "ppl_ratio", "needle_kl"}
    # Default gates pass every kind on this model; without benchmarking the smallest wins
    # (on a tie in size, the one with the exact tail).
    assert d.label == "nf4" and d.block_tokens == 32 and "smallest" in d.reason
    assert gen.last_stats.cache_kinds["k"] == "nf4"
    assert "cache nf4 (probe" in d.summary()


def test_gates_reject_what_exceeds_them(standard_model, val_tokens):
    """A needle-KL bound between q8_0's (~0) and the 4-bit kinds' (~1e-5) keeps q8_0; an
    impossible perplexity ratio leaves only the exact kinds."""
    gen = Generator(standard_model, auto(max_needle_kl=1e-6), probe=val_tokens)
    gen.generate(PROMPT)
    d = gen.cache_decision
    failed = {c.label: c.reason for c in d.candidates if not c.passed}
    assert {"q4_0", "nf4", "q4_0 no-tail", "nf4 no-tail"} <= set(failed)
    assert "q8_0" not in failed and d.label == "q8_0"
    assert all("needle KL" in reason for reason in failed.values())

    gen = Generator(standard_model, auto(max_ppl_ratio=0.5), probe=val_tokens)
    gen.generate(PROMPT)
    d = gen.cache_decision
    assert d.label == "fp16"
    assert all("ppl ratio" in c.reason for c in d.candidates if not c.passed)


def test_budget_filters_and_too_small_budget_is_a_clear_error(standard_model, val_tokens):
    # 5 + 4 tokens of capacity; fp16 needs 9 * 512 bytes: a budget of 2 KB excludes it.
    gen = Generator(standard_model, auto(cache_budget_mb=2 / 1024, max_needle_kl=1.0),
                    probe=val_tokens)
    gen.generate(PROMPT)
    d = gen.cache_decision
    over = [c.label for c in d.candidates if not c.fits_budget]
    assert over == ["fp32", "fp16", "q8_0", "q8_0 no-tail"] and d.label in ("q4_0", "nf4")
    with pytest.raises(CacheBudgetError, match=r"too small for any cache kind: 1 sequence\(s\) "
                                               r"x 9 tokens need at least 0.00"):
        Generator(standard_model, auto(cache_budget_mb=1e-6), probe=val_tokens).generate(PROMPT)


def test_without_probe_text_only_exact_kinds_are_eligible(standard_model, caplog):
    with caplog.at_level(logging.WARNING, logger="caramba.infer"):
        gen = Generator(standard_model, auto())
        gen.generate(PROMPT)
    assert gen.cache_decision.label == "fp16"
    assert "no probe text was given" in caplog.text


def test_micro_benchmark_measures_survivors(standard_model, val_tokens, monkeypatch):
    monkeypatch.setattr(cache_plan, "BENCH_CONTEXT", 96)
    gen = Generator(standard_model, auto(cache_auto_benchmark=True), probe=val_tokens)
    gen.generate(PROMPT)
    d = gen.cache_decision
    speeds = {c.label: c.tokens_per_s for c in d.candidates}
    assert all(v and v > 0 for v in speeds.values())
    chosen = speeds[d.label]
    assert chosen >= max(speeds.values()) * (1 - cache_plan.SPEED_TIE)
    assert "fastest" in d.reason


def test_plans_persist_and_are_reused(standard_model, val_tokens, tmp_path, monkeypatch):
    first = Generator(standard_model, auto(tmp_path), probe=val_tokens)
    first.generate(PROMPT)
    document = json.loads((tmp_path / "plans.json").read_text())
    assert document["format"] == "caramba.cache_plans" and len(document["plans"]) == 1
    key = next(iter(document["plans"]))
    model_hash, device, dtype, bucket = key.split("|")
    assert dtype == "float32" and bucket == "b1-s64" and device.startswith("cpu")

    def no_probe(*args, **kwargs):
        raise AssertionError("a persisted plan should have been reused")

    monkeypatch.setattr(cache_plan, "measure", no_probe)
    again = Generator(standard_model, auto(tmp_path), probe=val_tokens)
    again.generate(PROMPT)
    assert again.cache_decision.source == "persisted"
    assert again.cache_decision.label == first.cache_decision.label


def test_stale_plans_and_new_keys_are_reprobed(standard_model, val_tokens, tmp_path):
    Generator(standard_model, auto(tmp_path), probe=val_tokens).generate(PROMPT)
    stale = Generator(standard_model, auto(tmp_path, cache_plan_probe_interval_s=0.0),
                      probe=val_tokens)
    stale.generate(PROMPT)
    assert stale.cache_decision.source == "probe"
    longer = Generator(standard_model, auto(tmp_path, max_new_tokens=200), probe=val_tokens)
    longer.generate(PROMPT)  # another shape bucket: another key
    assert longer.cache_decision.source == "probe"
    plans = json.loads((tmp_path / "plans.json").read_text())["plans"]
    assert len(plans) == 2


def test_other_budgets_or_gates_are_reprobed(standard_model, val_tokens, tmp_path):
    Generator(standard_model, auto(tmp_path), probe=val_tokens).generate(PROMPT)
    tight = Generator(standard_model, auto(tmp_path, cache_budget_mb=2 / 1024,
                                           max_needle_kl=1.0), probe=val_tokens)
    tight.generate(PROMPT)
    assert tight.cache_decision.source == "probe"
    with pytest.raises(CacheBudgetError):
        Generator(standard_model, auto(tmp_path, cache_budget_mb=1e-6),
                  probe=val_tokens).generate(PROMPT)


def test_changed_weights_change_the_key(standard_model):
    before = cache_plan.model_hash(standard_model)
    weight = standard_model.topology.layers[-1].weight
    saved = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] += 1.0
    try:
        assert cache_plan.model_hash(standard_model) != before
    finally:
        with torch.no_grad():
            weight[0, 0] = saved
    assert cache_plan.model_hash(standard_model) == before


@pytest.mark.parametrize("content", ["{not json", '{"format": "other"}', "[]",
                                     '{"format": "caramba.cache_plans", "version": 1, '
                                     '"plans": {"KEY": {"kind": "q9"}}}'])
def test_corrupt_plan_files_are_logged_and_reprobed(standard_model, val_tokens, tmp_path,
                                                    caplog, content):
    path = tmp_path / "plans.json"
    gen = Generator(standard_model, auto(tmp_path), probe=val_tokens)
    key = cache_plan.plan_key(standard_model, torch.device("cpu"), torch.float32, 1, 9)
    path.write_text(content.replace("KEY", key))
    with caplog.at_level(logging.WARNING, logger="caramba.infer"):
        gen.generate(PROMPT)
    assert gen.cache_decision.source == "probe"
    assert "corrupt" in caplog.text or "malformed" in caplog.text
    assert PlanStore(path).get(gen.cache_decision.key) is not None  # rewritten, valid


def test_dba_candidates_fall_back_per_path(dba_model):
    labels = {c.label: c.kinds for c in candidates(dba_model)}
    assert labels["nf4 (k_sem fp16) no-tail"] == {"k_sem": "fp16"}
    assert labels["nf4 (k_sem fp16)"] == {"k_sem": "fp16"}
    assert labels["q8_0"] == {}


def test_dba_auto_picks_the_smallest_passing_mix(dba_model, val_tokens):
    gen = Generator(dba_model, auto(), probe=val_tokens)
    gen.generate(PROMPT)
    d = gen.cache_decision
    sizes = {c.label: c.bytes_per_token for c in d.candidates}
    # Per layer: q4_0 18 + 36 + 36 bytes; nf4 with fp16 semantic keys 64 + 34 + 34.
    assert sizes["q4_0"] == 2 * 90 and sizes["nf4 (k_sem fp16)"] == 2 * 132
    assert d.label == "q4_0"


def test_per_path_kinds_and_unstorable_kinds(dba_model):
    cfg = GenerateConfig(cache_kind="nf4", cache_kinds={"k_sem": "fp16"}, temperature=0.0,
                         max_new_tokens=3)
    gen = Generator(dba_model, cfg)
    gen.generate(PROMPT)
    assert gen.last_stats.cache_kinds["k_sem"] == "fp16"
    assert gen.last_stats.cache_kinds["k_geo"] == "nf4"
    from caramba.cache import CacheKindError

    with pytest.raises(CacheKindError, match=r"k_sem: cache kind 'nf4' stores blocks of 64"):
        Generator(dba_model, cfg.replace(cache_kinds={})).generate(PROMPT)
