"""The generation loop: prefill the prompt into the KV caches, then one token per step.

    ctx = spec.context()              # empty caches, built by the attention layers on demand
    logits = prefill(model, prompt, ctx, plan)
    for each new token:
        token = next_token(logits)    # penalties, temperature, top-k/p, draw
        logits = decode_one(model, token, ctx)
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from caramba.cache.plan import DecodePlan
from caramba.cache.spec import CacheSpec
from caramba.errors import InputError
from caramba.infer.config import GenerateConfig
from caramba.infer.sampling import next_token
from caramba.infer.step_graph import StepGraph
from caramba.layers.base import ForwardContext

log = logging.getLogger("caramba.infer")


class ContextLengthError(InputError, ValueError):
    """The prompt does not fit the model's context."""


@torch.no_grad()
def prefill(model: torch.nn.Module, tokens: torch.Tensor, ctx: ForwardContext,
            plan: DecodePlan) -> torch.Tensor:
    """Feed tokens (B, T) through the model into ctx's caches, after whatever they already
    hold (ctx.position tokens); logits (B, V) of the last one."""
    logits = None
    start = 0  # into `tokens`; the caches may already hold ctx.position earlier tokens
    for n in plan.prefill_chunks(tokens.shape[1]):
        logits = model(tokens[:, start : start + n], ctx)
        ctx.position += n
        start += n
    assert logits is not None, "prefill needs at least one token"
    return logits[:, -1]


@torch.no_grad()
def decode_one(model: torch.nn.Module, token: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """One token (B, 1) in, next-token logits (B, V) out; the caches grow by one."""
    logits = model(token, ctx)[:, -1]
    ctx.position += 1
    return logits


@dataclass
class GenerationStats:
    """Figures of the last generation."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens fed this time (the rest were already cached)
    new_tokens: int = 0
    prefill_s: float = 0.0  # prompt in, first token chosen
    decode_s: float = 0.0  # every later token
    stop_reason: str = ""  # max_new_tokens | stop_token | context
    cache_kinds: dict[str, str] | None = None
    cache_bytes: int = 0  # allocated KV-cache bytes at the end
    cache_bytes_per_token: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: tokens after the first per second of decoding."""
        later = self.new_tokens - 1
        return later / self.decode_s if later > 0 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a model's first weight (or buffer). A draft may hold neither
    (caramba.infer.lookup): then the CPU and float32."""
    held = next(itertools.chain(model.parameters(), model.buffers()), None)
    if held is None:
        return torch.device("cpu"), torch.float32
    return held.device, held.dtype


def model_context(model: torch.nn.Module) -> int | None:
    """The longest sequence a model declares it handles (attribute max_seq_len), if any."""
    value = getattr(model, "max_seq_len", None)
    return int(value) if isinstance(value, int) and value > 0 else None


class Generator:
    """Generates with one model, its caches built from `config` (auto kinds measured once).

        gen = Generator(model, GenerateConfig(cache_kind="auto"), probe=val_tokens)
        ids = gen.generate(prompt_ids)          # (B, T + n)
        for token in gen.stream(prompt_ids):    # B = 1, one id at a time
            ...
        gen.cache_decision, gen.last_stats

    `probe`: held-out real text in the model's tokenizer (1-D token ids), needed by
    cache_kind auto's quality gates.
    """

    def __init__(self, model: torch.nn.Module, config: GenerateConfig | None = None, *,
                 probe: torch.Tensor | None = None) -> None:
        self.model = model.eval()
        self.config = config or GenerateConfig()
        self.device, self.dtype = placement(model)
        self.max_seq_len = self.config.max_seq_len or model_context(model)
        self.probe = probe
        self.cache_decision: Any = None  # caramba.infer.cache_plan.CacheDecision under auto
        self.last_stats = GenerationStats()
        self.plan = DecodePlan(self.config.decode_plan, self.config.decode_bucket,
                               self.config.prefill_chunk)
        self.step_graph = StepGraph(self.model, enabled=self.config.cuda_graphs)

    # ------------------------------------------------------------------ caches

    def cache_spec(self, batch: int, capacity: int) -> CacheSpec:
        """A fresh CacheSpec for `batch` sequences of up to `capacity` tokens."""
        kind, kinds = self.config.cache_kind, dict(self.config.cache_kinds)
        block_tokens = self.config.cache_block_tokens
        if kind == "auto":
            from caramba.infer.cache_plan import decide_cache

            decision = decide_cache(self.model, self.config, batch=batch, capacity=capacity,
                                    probe=self.probe, previous=self.cache_decision)
            self.cache_decision = decision
            kind, kinds = decision.kind, {**decision.kinds, **kinds}
            block_tokens = decision.block_tokens
        return CacheSpec(kind=kind, kinds=kinds, capacity=capacity, max_len=self.max_seq_len,
                         block_tokens=block_tokens, plan=self.plan,
                         cuda_graphs=self.config.cuda_graphs)

    def _budget(self, prompt_len: int) -> int:
        if self.max_seq_len is not None and prompt_len > self.max_seq_len:
            raise ContextLengthError(
                f"the prompt has {prompt_len} tokens but the model's context is "
                f"{self.max_seq_len} tokens.",
                hint="shorten the prompt, or raise max_seq_len if the model was trained for "
                "longer sequences.")
        if prompt_len == 0:
            raise InputError("the prompt is empty: generation needs at least one token.",
                             hint="pass some text (or a BOS token id) as the prompt.")
        room = self.config.max_new_tokens
        if self.max_seq_len is not None:
            room = min(room, self.max_seq_len - prompt_len)
        return room

    # ------------------------------------------------------------------ generation

    def _as_batch(self, prompt: torch.Tensor | list[int]) -> torch.Tensor:
        tokens = torch.as_tensor(prompt, dtype=torch.long)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise InputError(f"prompt: expected token ids (T,) or (B, T), got shape "
                             f"{tuple(tokens.shape)}")
        return tokens.to(self.device)

    def steps(self, prompt: torch.Tensor | list[int]) -> Iterator[torch.Tensor]:
        """Yield each new (B, 1) token as soon as it is chosen; fills `last_stats`."""
        tokens = self._as_batch(prompt)
        B, T = tokens.shape
        room = self._budget(T)
        if room <= 0:
            self.last_stats = GenerationStats(prompt_tokens=T, stop_reason="context" if
                                              self.config.max_new_tokens else "max_new_tokens")
            return
        spec = self.cache_spec(B, T + room)
        yield from self.continue_steps(tokens, spec, spec.context(), room)

    def continue_steps(self, tokens: torch.Tensor, spec: CacheSpec, ctx: ForwardContext,
                       room: int, seen: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Prefill `tokens` (B, T) after the ctx.position tokens the caches already hold, then
        yield up to `room` new tokens. The newest token is never fed back, so afterwards the
        caches hold everything but it (a conversation feeds it with its next turn).

        seen: every earlier token for the repetition penalty (default: `tokens` only).
        """
        cfg = self.config
        B, T = tokens.shape
        stats = GenerationStats(prompt_tokens=ctx.position + T, prefill_tokens=T)
        self.last_stats = stats
        rng = None
        if cfg.temperature > 0:
            rng = torch.Generator(device=self.device)
            rng.manual_seed(cfg.seed if cfg.seed is not None else int(torch.seed() % 2**62))
        stop = torch.tensor(cfg.stop_tokens, dtype=torch.long, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        if cfg.repetition_penalty == 1.0:
            seen = None
        elif seen is None:
            seen = tokens

        started = time.perf_counter()
        first_at = None
        try:
            logits = prefill(self.model, tokens, ctx, self.plan)
            stats.cache_kinds = spec.caches[0].kinds if spec.caches else {}
            stats.stop_reason = "max_new_tokens" if room == cfg.max_new_tokens else "context"
            for step in range(room):
                token = next_token(logits, cfg, seen, rng)
                if stop.numel():
                    hit = torch.isin(token[:, 0], stop)
                    token = torch.where(done[:, None], stop[:1].expand_as(token), token)
                    done |= hit
                if first_at is None:
                    first_at = time.perf_counter()
                stats.new_tokens += 1
                yield token
                if stop.numel() and bool(done.all()):
                    stats.stop_reason = "stop_token"
                    break
                if seen is not None:
                    seen = torch.cat((seen, token), dim=1)
                if step + 1 < room:
                    # One graph replay on CUDA; the logits buffer is reused by the next step.
                    logits = self.step_graph(token, ctx, spec)[:, -1]
        finally:  # also when the caller stops iterating early
            end = time.perf_counter()
            stats.prefill_s = (first_at or end) - started
            stats.decode_s = end - (first_at or end)
            stats.cache_bytes = spec.nbytes
            stats.cache_bytes_per_token = spec.bytes_per_token
            log.info("generated %d tokens (%s), %.1f tokens/s, cache %s, %d bytes/token",
                     stats.new_tokens, stats.stop_reason or "stopped by caller",
                     stats.tokens_per_s, stats.cache_kinds, stats.cache_bytes_per_token)

    def generate(self, prompt: torch.Tensor | list[int]) -> torch.Tensor:
        """prompt (B, T) or (T,) -> (B, T + new tokens). A stop token ends a row (it is kept
        in the output; rows that stopped earlier are padded with the first stop token)."""
        tokens = self._as_batch(prompt)
        new = list(self.steps(tokens))
        return torch.cat([tokens, *new], dim=1)

    def stream(self, prompt: torch.Tensor | list[int]) -> Iterator[int]:
        """Token ids of one sequence as they are generated; a stop token is not yielded."""
        stop = set(self.config.stop_tokens)
        for token in self.steps(prompt):
            if token.shape[0] != 1:
                raise InputError("stream() takes one prompt; use generate() for a batch")
            value = int(token[0, 0])
            if value in stop:
                return
            yield value
