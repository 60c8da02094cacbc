"""Scoring a model on text: log-probabilities of continuations, greedy answers, NLL."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

INTEGER = re.compile(r"[-+]?\d+")


def join(prompt: str, choice: str) -> str:
    """The prompt followed by the choice, with a space between unless either has one."""
    if not prompt or prompt[-1].isspace() or choice[:1].isspace():
        return prompt + choice
    return prompt + " " + choice


def continuation_ids(tokenizer: Any, prompt: str, choice: str) -> tuple[list[int], list[int]]:
    """(prompt ids, choice ids) such that their concatenation tokenizes join(prompt, choice).

    BPE may merge across the boundary; then the choice is scored as the tokens after the
    longest common prefix of the two encodings.
    """
    context = tokenizer.encode(prompt)
    full = tokenizer.encode(join(prompt, choice))
    shared = 0
    while shared < min(len(context), len(full)) and context[shared] == full[shared]:
        shared += 1
    shared = min(shared, len(full) - 1)  # at least one scored token
    return full[:shared], full[shared:]


@torch.no_grad()
def choice_logprobs(model: Any, tokenizer: Any, prompt: str, choices: Sequence[str],
                    device: torch.device) -> list[float]:
    """Sum of log p(choice tokens | prompt) for each choice, in one padded batch."""
    pairs = [continuation_ids(tokenizer, prompt, c) for c in choices]
    rows = [ctx + cont for ctx, cont in pairs]
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    was_training = model.training
    model.eval()
    try:
        logp = F.log_softmax(model(tokens.to(device)).float(), dim=-1).cpu()
    finally:
        model.train(was_training)
    scores = []
    for i, (ctx, cont) in enumerate(pairs):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        targets = torch.tensor(cont)
        if len(ctx) == 0:  # nothing predicts the first token: score the rest
            positions, targets = positions[1:], targets[1:]
        scores.append(float(logp[i, positions, targets].sum()))
    return scores


@torch.no_grad()
def greedy_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int,
                device: torch.device) -> str:
    """The greedy continuation of `prompt` (KV-cached decoding)."""
    ids = tokenizer.encode(prompt)
    tokens = torch.tensor([ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(tokens, max_new_tokens, temperature=0.0)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, len(ids):].tolist())


def first_integer(text: str) -> int | None:
    match = INTEGER.search(text)
    return int(match.group()) if match else None
