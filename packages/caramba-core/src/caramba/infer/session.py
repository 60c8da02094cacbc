"""A conversation that keeps its KV cache between turns: each turn prefills only the tokens
the cache lacks (the previous reply's last token and the new message), not the whole
history again.

    session = Conversation(generator, context=2048)
    for token in session.reply(tokenizer.encode("Hello\n")):
        ...
    session.generator.last_stats.prefill_tokens   # this turn's new tokens only

When history and reply would overflow the context, the oldest tokens are dropped; positions
then shift, so the cache is rebuilt from the trimmed history (one full prefill).

A SpeculativeGenerator keeps both its caches (target and draft) the same way; after a reply
they are rolled back to the history, dropping drafted tokens that were never emitted.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from caramba.cache.spec import CacheSpec
from caramba.errors import InputError
from caramba.infer.generate import Generator
from caramba.infer.speculative import SpeculativeGenerator, SpeculativeState
from caramba.layers.base import ForwardContext


class Conversation:
    """Token history of one conversation and the caches that hold all of it but the newest
    token. `context`: the most tokens the model may see (default: the generator's limit)."""

    def __init__(self, generator: Generator | SpeculativeGenerator,
                 context: int | None = None) -> None:
        limit = context or _max_seq_len(generator)
        if limit is None:
            raise InputError("context: the model declares no maximum sequence length.",
                             hint="pass context= (or set max_seq_len in the GenerateConfig).")
        room = generator.config.max_new_tokens
        if limit <= room:
            raise InputError(f"context {limit} leaves no room for a message before the "
                             f"{room} tokens of a reply.",
                             hint="lower max_new_tokens or raise the context.")
        self.generator = generator
        self.context = limit
        self.history: list[int] = []
        self.rebuilds = 0  # times trimming forced a full prefill
        self._spec: CacheSpec | None = None
        self._ctx: ForwardContext | None = None
        self._state: SpeculativeState | None = None  # a speculative generator's caches

    @property
    def cached_tokens(self) -> int:
        if self._state is not None:
            return self._state.t_ctx.position
        return self._ctx.position if self._ctx is not None else 0

    def reset(self) -> None:
        """Forget the conversation and its caches."""
        self.history = []
        self._spec = self._ctx = self._state = None

    def reply(self, message: list[int]) -> Iterator[int]:
        """Append `message`, then yield the reply's token ids as they are generated (a stop
        token ends the reply and is not yielded). Stopping early keeps what was yielded."""
        gen = self.generator
        room = gen.config.max_new_tokens
        self.history += list(message)
        keep = self.context - room
        if len(self.history) > keep:
            self.history = self.history[-keep:]
            if self.cached_tokens:
                self.rebuilds += 1
            self._spec = self._ctx = self._state = None
        if isinstance(gen, SpeculativeGenerator):
            yield from self._speculative_reply(gen)
            return
        if self._ctx is None:
            self._spec = gen.cache_spec(1, self.context)
            self._ctx = self._spec.context()
        feed = self.history[self._ctx.position :]
        if not feed:
            raise InputError("reply: the message is empty and nothing is pending.",
                             hint="send at least one token.")
        device = gen.device
        tokens = torch.tensor([feed], dtype=torch.long, device=device)
        seen = torch.tensor([self.history], dtype=torch.long, device=device)
        stop = set(gen.config.stop_tokens)
        steps = gen.continue_steps(tokens, self._spec, self._ctx, room, seen=seen)
        try:
            for token in steps:
                value = int(token[0, 0])
                if value in stop:
                    return
                self.history.append(value)
                yield value
        finally:  # close now, so the stats are final when the caller reads them
            steps.close()

    def _speculative_reply(self, gen: SpeculativeGenerator) -> Iterator[int]:
        if not self.history or self.cached_tokens >= len(self.history):
            raise InputError("reply: the message is empty and nothing is pending.",
                             hint="send at least one token.")
        if self._state is None:
            self._state = gen.new_state(self.context + gen.spec.spec_k_max + 1)
        stream = gen.stream(self.history, state=self._state)
        try:
            for value in stream:
                self.history.append(value)
                yield value
        finally:
            stream.close()
            self._state.rollback(len(self.history) - 1)


def _max_seq_len(generator: Generator | SpeculativeGenerator) -> int | None:
    inner = generator.target if isinstance(generator, SpeculativeGenerator) else generator
    return inner.max_seq_len
