"""Generator and GenerateConfig: greedy equals the full forward's argmax, seeded sampling,
top-k/top-p/repetition penalty, stop tokens, context limits, decode plans, stats."""

import pytest
import torch

from caramba.cache import CacheKindError
from caramba.errors import InputError
from caramba.infer import GenerateConfig, Generator
from caramba.infer.config import ConfigError
from caramba.infer.generate import ContextLengthError
from caramba.infer.sampling import apply_repetition_penalty, probabilities

PROMPT = "And God said unto Moses,"


@pytest.fixture(scope="module")
def prompt(english):
    return english.tokenizer.encode(PROMPT)


def greedy(**changes):
    return GenerateConfig(**{"temperature": 0.0, "max_new_tokens": 12, **changes})


@pytest.mark.parametrize("which", ["standard", "dba"])
def test_greedy_equals_repeated_argmax_of_the_full_forward(which, prompt, request):
    model = request.getfixturevalue(f"{which}_model")
    out = Generator(model, greedy(cache_kind="fp32")).generate(prompt)
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq)


def test_generator_matches_language_model_generate(standard_model, prompt):
    ours = Generator(standard_model, greedy(cache_kind="fp32")).generate(prompt)
    theirs = standard_model.generate(torch.tensor([prompt]), 12, temperature=0.0)
    assert torch.equal(ours, theirs)


def test_seeded_sampling_is_reproducible_and_seeds_matter(standard_model, prompt):
    def run(seed):
        cfg = GenerateConfig(temperature=1.0, max_new_tokens=16, seed=seed)
        return Generator(standard_model, cfg).generate(prompt)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_top_k_1_and_tiny_top_p_are_greedy(standard_model, prompt):
    ref = Generator(standard_model, greedy()).generate(prompt)
    for changes in ({"top_k": 1}, {"top_p": 1e-6}):
        cfg = GenerateConfig(temperature=1.3, max_new_tokens=12, seed=0, **changes)
        assert torch.equal(Generator(standard_model, cfg).generate(prompt), ref)


def test_probability_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    p = probabilities(logits, GenerateConfig(temperature=1.0, top_k=2))
    assert (p[0, 2:] == 0).all() and torch.isclose(p.sum(), torch.tensor(1.0))
    p = probabilities(logits, GenerateConfig(temperature=1.0, top_p=0.8))
    full = torch.softmax(logits, -1)[0]
    assert full[0] < 0.8 < full[0] + full[1]  # the nucleus is the first two tokens
    assert (p[0, :2] > 0).all() and (p[0, 2:] == 0).all()
    assert torch.equal(probabilities(logits, GenerateConfig(temperature=0.0))[0],
                       torch.tensor([1.0, 0, 0, 0, 0]))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0]]))


def test_repetition_penalty_reduces_repeats(standard_model, prompt):
    plain = Generator(standard_model, greedy(max_new_tokens=40)).generate(prompt)[0]
    penalised = Generator(standard_model, greedy(max_new_tokens=40, repetition_penalty=3.0)
                          ).generate(prompt)[0]
    assert len(set(penalised[len(prompt):].tolist())) > len(set(plain[len(prompt):].tolist()))


def test_stop_tokens_end_generation(standard_model, prompt):
    full = Generator(standard_model, greedy()).generate(prompt)[0, len(prompt):].tolist()
    stop = full[4]
    first = full.index(stop)
    gen = Generator(standard_model, greedy(stop_tokens=(stop,)))
    out = gen.generate(prompt)[0, len(prompt):].tolist()
    assert out == full[: first + 1] and gen.last_stats.stop_reason == "stop_token"
    assert list(gen.stream(prompt)) == full[:first]


def test_batch_rows_stop_independently(standard_model, english):
    prompts = torch.tensor([english.tokenizer.encode("The king said"),
                            english.tokenizer.encode("The lord said")])
    free = Generator(standard_model, greedy()).generate(prompts)
    stop = int(free[0, 3 + 2])
    out = Generator(standard_model, greedy(stop_tokens=(stop,))).generate(prompts)
    for row in range(2):
        new = free[row, 3:].tolist()
        if stop in new:
            cut = new.index(stop) + 1
            assert out[row, 3 : 3 + cut].tolist() == new[:cut]
            assert (out[row, 3 + cut :] == stop).all()


def test_stats_report_throughput_and_cache(standard_model, prompt):
    gen = Generator(standard_model, greedy(cache_kind="q8_0"))
    gen.generate(prompt)
    s = gen.last_stats
    assert s.new_tokens == 12 and s.prompt_tokens == len(prompt)
    assert s.tokens_per_s > 0 and s.stop_reason == "max_new_tokens"
    assert s.cache_kinds["k"] == "q8_0" and s.cache_bytes_per_token == 2 * 2 * 68
    assert s.cache_bytes > 0


def test_prompt_longer_than_the_context_is_a_clear_error(standard_model):
    gen = Generator(standard_model, greedy(max_seq_len=16))
    with pytest.raises(ContextLengthError, match="the prompt has 20 tokens but the model's "
                                                 "context is 16 tokens"):
        gen.generate(list(range(20)))
    with pytest.raises(InputError, match="the prompt is empty"):
        gen.generate([])


def test_generation_stops_at_the_context_end(standard_model):
    gen = Generator(standard_model, greedy(max_seq_len=16, max_new_tokens=50))
    out = gen.generate(list(range(10)))
    assert out.shape == (1, 16) and gen.last_stats.stop_reason == "context"


@pytest.mark.parametrize("plan", ["auto", "fixed"])
def test_decode_plans_do_not_change_greedy_output(standard_model, prompt, plan):
    ref = Generator(standard_model, greedy(decode_plan="none", max_new_tokens=40,
                                           cache_kind="fp32")).generate(prompt)
    out = Generator(standard_model, greedy(decode_plan=plan, decode_bucket=16, prefill_chunk=3,
                                           max_new_tokens=40, cache_kind="fp32")).generate(prompt)
    assert torch.equal(out, ref)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"cache_kind": "q8"}, r"unknown cache kind 'q8' — did you mean 'q8_0'\?"),
        ({"cache_kinds": {"k_sem": "int3"}}, r"cache_kinds\['k_sem'\]: unknown cache kind"),
        ({"cache_kinds": {"q": "fp16"}}, r"unknown tensor 'q'"),
        ({"temperature": -1.0}, r"temperature must be a finite number >= 0"),
        ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
        ({"top_k": 0}, r"top_k must be an int >= 1"),
        ({"decode_plan": "sometimes"}, r"decode_plan must be one of auto, fixed, none"),
        ({"cache_budget_mb": 0}, r"cache_budget_mb must be a finite number > 0"),
    ],
)
def test_config_errors_are_input_errors(changes, message):
    with pytest.raises((ConfigError, CacheKindError), match=message) as info:
        GenerateConfig(**changes)
    assert isinstance(info.value, InputError)
