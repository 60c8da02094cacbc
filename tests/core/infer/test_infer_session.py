"""Conversation: the KV cache outlives a turn, each turn prefills only its new tokens, and
the replies are exactly those of a fresh generation over the whole history."""

import pytest
import torch

from caramba.errors import InputError
from caramba.infer import GenerateConfig, Generator, SpeculativeGenerator, tiny
from caramba.infer.session import Conversation
from caramba.infer.speculative import SpeculativeConfig

TURNS = ["And God said unto Moses,", " Then the king answered", " ROMEO. What light"]


def greedy(**changes):
    return GenerateConfig(**{"temperature": 0.0, "max_new_tokens": 8, "cache_kind": "fp32",
                             **changes})


def fresh_reply(model, history, cfg):
    out = Generator(model, cfg).generate(history)
    return out[0, len(history):].tolist()


@pytest.mark.parametrize("which", ["standard", "dba"])
def test_each_turn_prefills_only_new_tokens_and_matches_a_fresh_generation(which, english,
                                                                           request):
    model = request.getfixturevalue(f"{which}_model")
    conv = Conversation(Generator(model, greedy()), context=256)
    history: list[int] = []
    for i, text in enumerate(TURNS):
        message = english.tokenizer.encode(text)
        expected = fresh_reply(model, history + message, greedy())
        reply = list(conv.reply(message))
        assert reply == expected, text
        stats = conv.generator.last_stats
        # Turn 1 feeds its message; later turns the previous reply's last token + message.
        assert stats.prefill_tokens == len(message) + (1 if i else 0)
        assert stats.prompt_tokens == len(history) + len(message)
        history += message + reply
        assert conv.history == history
        assert conv.cached_tokens == len(history) - 1  # all but the newest token
    assert conv.rebuilds == 0


def test_stopping_a_reply_early_keeps_the_cache_consistent(standard_model, english):
    conv = Conversation(Generator(standard_model, greedy()), context=256)
    first = english.tokenizer.encode(TURNS[0])
    for n, _ in enumerate(conv.reply(first), start=1):
        if n == 3:
            break
    assert len(conv.history) == len(first) + 3
    second = english.tokenizer.encode(TURNS[1])
    expected = fresh_reply(standard_model, conv.history + second, greedy())
    assert list(conv.reply(second)) == expected
    assert conv.generator.last_stats.prefill_tokens == len(second) + 1


def test_outgrowing_the_context_trims_the_history_and_rebuilds_the_cache(standard_model,
                                                                        english):
    context = 32
    conv = Conversation(Generator(standard_model, greedy()), context=context)
    for text in TURNS * 2:
        message = english.tokenizer.encode(text)
        trimmed = (conv.history + message)[-(context - 8):]
        expected = fresh_reply(standard_model, trimmed, greedy())
        assert list(conv.reply(message)) == expected
        assert len(conv.history) <= context
    assert conv.rebuilds >= 1
    assert conv.generator.last_stats.prefill_tokens == conv.generator.last_stats.prompt_tokens


def test_seeded_sampling_turns_match_fresh_generations(standard_model, english):
    cfg = GenerateConfig(temperature=1.0, top_k=20, max_new_tokens=6, seed=3,
                         cache_kind="fp32", repetition_penalty=1.3)
    conv = Conversation(Generator(standard_model, cfg), context=128)
    for text in TURNS:
        message = english.tokenizer.encode(text)
        expected = fresh_reply(standard_model, conv.history + message, cfg)
        assert list(conv.reply(message)) == expected


def test_reset_and_bad_conversations(standard_model, english):
    conv = Conversation(Generator(standard_model, greedy()), context=64)
    list(conv.reply(english.tokenizer.encode(TURNS[0])))
    conv.reset()
    assert conv.history == [] and conv.cached_tokens == 0
    list(conv.reply(english.tokenizer.encode(TURNS[1])))
    assert conv.generator.last_stats.prefill_tokens == conv.generator.last_stats.prompt_tokens
    with pytest.raises(InputError, match="no room"):
        Conversation(Generator(standard_model, greedy(max_new_tokens=64)), context=64)
    with pytest.raises(InputError, match="no maximum sequence length"):
        Conversation(Generator(torch.nn.Linear(2, 2), greedy()))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_speculative_conversation_keeps_both_caches_and_matches_fresh_generations(
        temperature, standard_model, english):
    draft = tiny.tiny_model(tiny.DRAFT, data=english)
    cfg = greedy(temperature=temperature, top_k=5, seed=1, max_new_tokens=10)
    sc = SpeculativeConfig(spec_k=3, disable_below=0.0, cost_ratio=0.1)
    gen = SpeculativeGenerator(standard_model, draft, cfg, sc)
    conv = Conversation(gen, context=256)
    for i, text in enumerate(TURNS):
        message = english.tokenizer.encode(text)
        history = conv.history + message
        reply = list(conv.reply(message))
        if temperature == 0:  # greedy: exactly the target's own greedy reply
            assert reply == fresh_reply(standard_model, history, cfg), text
        else:  # sampled: the same draws as a fresh speculative generation (a fixed cost
            # ratio makes spec_k, and so the draws, independent of timing)
            fresh = SpeculativeGenerator(standard_model, draft, cfg, sc)
            assert reply == fresh.generate(history)[0, len(history):].tolist(), text
        stats = gen.last_stats
        assert stats.prefill_tokens == len(message) + (1 if i else 0)
        assert stats.prompt_tokens == len(history)
        assert conv.cached_tokens == len(conv.history) - 1
        assert conv._state.d_ctx.position <= conv.cached_tokens
