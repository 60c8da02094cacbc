"""A draft that copies from the context (prompt lookup decoding; Saxena 2023, vLLM's n-gram
proposer): it predicts that the newest tokens continue as they did the last time they
occurred earlier in the sequence.

Why: when a generation quotes, edits or summarises text it was given, most of its tokens
already sit in the context, and finding them costs a dictionary lookup instead of a network
pass, so a verify pass of the target can accept several of them at once. On free text it
rarely matches; the speculative generator's cost model then shortens its drafts or falls back
to plain decoding.

It is a module like any draft model: `forward(tokens, ctx)` returns logits over the full
vocabulary, 0 at the predicted token and -inf elsewhere (a distribution concentrated on one
token, so rejection sampling stays exact), or all zeros (uniform) where no n-gram matches.
Only the last position is predicted, the one a draft step reads; earlier rows are uniform.
The token history lives in `ctx.state`, trimmed to `ctx.position` on every call, so cache
rollbacks (`ctx.position` set back) apply to it too.
"""

from __future__ import annotations

import torch
from torch import nn

from caramba.errors import InputError
from caramba.layers.base import ForwardContext


class ContextLookupDraft(nn.Module):
    """Next token = the one that followed the most recent earlier occurrence of the last n
    tokens, n from `max_ngram` down to `min_ngram` (longer matches first)."""

    def __init__(self, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1) -> None:
        super().__init__()
        if vocab_size < 1:
            raise InputError(f"vocab_size must be >= 1, got {vocab_size}")
        if not 1 <= min_ngram <= max_ngram:
            raise InputError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.vocab_size = vocab_size
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.max_seq_len = None

    def predict(self, history: list[int]) -> int | None:
        """The copied next token after `history`, or None where nothing matches."""
        for n in range(min(self.max_ngram, len(history) - 1), self.min_ngram - 1, -1):
            tail = history[-n:]
            # The most recent earlier occurrence whose continuation is known.
            for start in range(len(history) - n - 1, -1, -1):
                if history[start : start + n] == tail:
                    return history[start + n]
        return None

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[0] != 1:
            raise InputError(f"ContextLookupDraft drafts one sequence: tokens (1, T), got "
                             f"{tuple(tokens.shape)}")
        position = 0 if ctx is None else ctx.position
        held = [] if ctx is None else (ctx.module_state(self) or [])
        history = held[:position] + tokens[0].tolist()
        if ctx is not None:
            ctx.set_module_state(self, history)
        logits = torch.zeros(1, tokens.shape[1], self.vocab_size, device=tokens.device)
        nxt = self.predict(history)
        if nxt is not None and 0 <= nxt < self.vocab_size:
            logits[0, -1].fill_(float("-inf"))
            logits[0, -1, nxt] = 0.0
        return logits

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, ngram={self.min_ngram}..{self.max_ngram}"


class LookupAugmentedDraft(nn.Module):
    """A draft model whose proposal gives way to a context copy wherever the newest tokens
    occurred before (an n-gram of at least `lookup.min_ngram` tokens).

    A small draft cannot copy (it has neither the context length nor the induction heads for
    it), and a copy has nothing to say where the text is new: together each covers the
    other's gap. The draft is fed every token as usual (its caches stay in step); only the
    last row of its logits is replaced when a copy exists.
    """

    def __init__(self, draft: nn.Module, lookup: ContextLookupDraft) -> None:
        super().__init__()
        self.draft = draft
        self.lookup = lookup
        self.max_seq_len = getattr(draft, "max_seq_len", None)

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        logits = self.draft(tokens, ctx)
        copy = self.lookup(tokens, ctx)[0, -1]
        if torch.isinf(copy).any():  # a match: all mass on the copied token
            logits = logits.clone()
            logits[0, -1] = copy.to(logits.dtype)
        return logits
