"""Sample continuations of a few prompts after training, for a human to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sample:
    prompt: str
    completion: str


def sample_texts(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int,
                 temperature: float, top_k: int, seed: int, device: torch.device) -> list[Sample]:
    if tokenizer is None or not prompts or max_new_tokens == 0:
        return []
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        tokens = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.no_grad():
            result = model.generate(tokens, max_new_tokens, temperature=temperature,
                                    top_k=top_k or None, generator=generator)
        new_ids = result[0, len(ids):].tolist()
        out.append(Sample(prompt, tokenizer.decode(new_ids)))
    return out
