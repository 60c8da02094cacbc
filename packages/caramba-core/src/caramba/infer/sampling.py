"""From logits to the next token: penalties, temperature, top-k, top-p, then a draw."""

from __future__ import annotations

import torch

from caramba.infer.config import GenerateConfig


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty: for tokens in `seen` (B, n), positive logits / p, negative ones * p."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def probabilities(logits: torch.Tensor, config: GenerateConfig,
                  seen: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) float32 next-token distribution after every setting of `config`.

    temperature 0 gives a one-hot distribution on the argmax (greedy), so speculative
    decoding's acceptance rule reduces to "draft == target argmax".
    """
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= config.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(logits, dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V), as a (B, 1) long tensor."""
    return torch.multinomial(probs, num_samples=1, generator=generator)


def next_token(logits: torch.Tensor, config: GenerateConfig, seen: torch.Tensor | None,
               generator: torch.Generator | None) -> torch.Tensor:
    if config.temperature == 0:
        if seen is not None and config.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits.float(), seen, config.repetition_penalty)
        return logits.argmax(-1, keepdim=True)
    return draw(probabilities(logits, config, seen), generator)
