"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model
proposes spec_k tokens, the target scores them all in one forward pass, and rejection
sampling keeps exactly the target's distribution.

One round, with both caches holding every token but the newest (`last`):

    draft:  feed last, sample d_1 .. d_k from q_1 .. q_k        (k cheap steps)
    target: one pass over [last, d_1 .. d_k] -> p_0 .. p_k        (one expensive step)
    accept: d_i with probability min(1, p_{i-1}(d_i) / q_i(d_i)), left to right;
            at the first rejection draw from norm(max(0, p_{i-1} - q_i)) and stop;
            if all k pass, draw a bonus token from p_k
    caches: truncate both to the accepted prefix (the target keeps last + accepted tokens)

With temperature 0 both distributions are one-hot, so acceptance means "the draft's token
is the target's argmax" and the output is exactly the target's greedy output. spec_k adapts
to the running acceptance rate and the measured costs, and when drafting stops paying the
generator falls back to plain decoding with the target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from caramba.cache.spec import CacheSpec
from caramba.errors import InputError
from caramba.infer.config import ConfigError, GenerateConfig
from caramba.infer.generate import Generator, decode_one, prefill
from caramba.infer.sampling import probabilities
from caramba.layers.base import ForwardContext

log = logging.getLogger("caramba.infer")

PLAIN_PROBES = 2  # plain steps timed at the start of a stream (measured-cost mode)


@dataclass
class SpeculativeConfig:
    """Draft length and its adaptation.

    spec_k: tokens drafted per round (the start value when adaptive).
    adaptive: re-choose spec_k each round from the per-token acceptance estimate alpha, the
        measured draft step time d and verify-pass time v(k), maximising the expected tokens
        per unit time (1 - alpha^(k+1)) / ((1 - alpha)(k d + v(k))).
    disable_below: fall back to plain decoding once the acceptance estimate stays below this
        for `patience` rounds (after `warmup` rounds). With measured costs (cost_ratio None)
        the test is the expected speedup instead: fall back once it stays below 1 (a cheap
        draft pays even at low acceptance, a costly one not even at high acceptance).
    """

    spec_k: int = 4
    spec_k_min: int = 1
    spec_k_max: int = 8
    adaptive: bool = True
    disable_below: float = 0.3
    patience: int = 4
    warmup: int = 4
    ema: float = 0.3  # weight of the newest round in the running acceptance estimate
    cost_ratio: float | None = None  # fixed draft step / target pass time; None: measured

    def __post_init__(self) -> None:
        if not 1 <= self.spec_k_min <= self.spec_k <= self.spec_k_max:
            raise ConfigError(f"need 1 <= spec_k_min <= spec_k <= spec_k_max, got "
                              f"{self.spec_k_min}, {self.spec_k}, {self.spec_k_max}")
        if not 0.0 <= self.disable_below < 1.0:
            raise ConfigError(f"disable_below must lie in [0, 1), got {self.disable_below}")
        if not 0.0 < self.ema <= 1.0:
            raise ConfigError(f"ema must lie in (0, 1], got {self.ema}")


def accept_drafts(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rejection sampling for N independent rounds at once.

    p (N, k+1, V) target distributions, q (N, k, V) draft distributions, drafts (N, k) the
    drafted tokens (drawn from q). Returns (accepted (N,), next_token (N,)): how many drafts
    each round keeps, and the token that follows them (a correction or the bonus).
    """
    N, k = drafts.shape
    rows = torch.arange(N, device=p.device)
    p_d = p[:, :k].gather(-1, drafts[..., None])[..., 0]
    q_d = q.gather(-1, drafts[..., None])[..., 0]
    u = torch.rand((N, k), generator=generator, device=p.device)
    ok = u * q_d < p_d  # u < p/q without dividing by a zero q
    accepted = torch.where(ok.all(-1), k, (~ok).float().argmax(-1))
    # Residual at the first rejection; the bonus distribution p_k when all passed.
    at = accepted.clamp(max=k)
    p_at = p[rows, at]
    q_at = torch.where((accepted < k)[:, None], q[rows, at.clamp(max=k - 1)],
                       torch.zeros_like(p_at))
    residual = (p_at - q_at).clamp(min=0)
    total = residual.sum(-1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp(min=1e-30), p_at)
    next_token = torch.multinomial(residual, 1, generator=generator)[:, 0]
    return accepted, next_token


def accept_greedy(logits: torch.Tensor, drafts: torch.Tensor) -> tuple[int, int]:
    """Greedy verification: logits (k+1, V) of the target over [last, d_1 .. d_k], drafts
    (k,). Returns (accepted, next_token): the drafts that equal the target's argmax, left to
    right, and the target's own token after them. No distributions are built: with
    temperature 0 both are one-hot, so this is accept_drafts without its (k+1, V) tensors."""
    k = drafts.shape[0]
    choice = logits.argmax(-1)
    accepted = int((choice[:k] == drafts).cumprod(0).sum())
    return accepted, int(choice[accepted])


def best_k(alpha: float, draft_cost: float, k_min: int, k_max: int,
           verify_cost: Callable[[int], float] | None = None) -> int:
    """spec_k maximising expected tokens per unit time (Leviathan et al., eq. 1).

    alpha: per-token acceptance; draft_cost: one draft step; verify_cost(k): the target's
    pass over k + 1 tokens, in the same unit (default 1: a pass costs one target step,
    whatever its length, as on a memory-bound accelerator). On a CPU a longer pass costs
    more, so the generator passes the times it measured.
    """
    alpha = min(max(alpha, 1e-3), 1 - 1e-3)
    verify = verify_cost or (lambda k: 1.0)

    def rate(k: int) -> float:
        return (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * draft_cost + verify(k)))

    return max(range(k_min, k_max + 1), key=rate)


class CostModel:
    """Running estimates behind the choice of spec_k: per-token acceptance (successes over
    trials, as a geometric count: a round with a accepted of k drafts had a successes and,
    if a < k, one failure), the time of one draft step, and the verify time per draft length.

    A length not yet tried borrows the time of the nearest one tried, so spec_k explores
    upward when drafts are cheap and learns the true price of a longer pass.
    """

    def __init__(self, ema: float, alpha: float = 0.8) -> None:
        self.ema = ema
        self.successes, self.trials = alpha, 1.0
        self.draft_s: float | None = None
        self.verify_s: dict[int, float] = {}
        self.plain_s: float | None = None  # one plain target step (fastest seen)

    def plain(self, seconds: float) -> None:
        self.plain_s = seconds if self.plain_s is None else min(self.plain_s, seconds)

    @property
    def alpha(self) -> float:
        return self.successes / self.trials if self.trials > 0 else 0.0

    def update(self, k: int, accepted: int, draft_s: float, verify_s: float) -> None:
        w = self.ema
        self.successes = (1 - w) * self.successes + w * accepted
        self.trials = (1 - w) * self.trials + w * (accepted + (accepted < k))
        step = draft_s / k
        self.draft_s = step if self.draft_s is None else (1 - w) * self.draft_s + w * step
        old = self.verify_s.get(k)
        self.verify_s[k] = verify_s if old is None else (1 - w) * old + w * verify_s

    def speedup(self, k: int) -> float:
        """Expected tokens per unit time of rounds of k drafts over plain decoding. A plain
        step is priced as measured, but never above the shortest verify pass seen (a pass
        over one token cannot cost more than one over two; a noisy probe must not make a
        useless draft look worth it)."""
        if self.draft_s is None:
            return 1.0
        a = min(max(self.alpha, 1e-3), 1 - 1e-3)
        tokens = (1 - a ** (k + 1)) / (1 - a)
        plain = self.verify(0) if self.plain_s is None else min(self.plain_s, self.verify(0))
        return tokens * plain / (k * self.draft_s + self.verify(k))

    def verify(self, k: int) -> float:
        if k in self.verify_s:
            return self.verify_s[k]
        nearest = min(self.verify_s, key=lambda seen: (abs(seen - k), seen))
        return self.verify_s[nearest]


@dataclass
class SpeculativeState:
    """The target's and the draft's caches and positions, kept between calls of stream()."""

    t_spec: CacheSpec
    d_spec: CacheSpec
    t_ctx: ForwardContext
    d_ctx: ForwardContext

    def rollback(self, n: int) -> None:
        """Keep at most the first n tokens in both caches."""
        for spec, ctx in ((self.t_spec, self.t_ctx), (self.d_spec, self.d_ctx)):
            if ctx.position > n:
                spec.truncate(n)
                ctx.position = n


@dataclass
class SpeculativeStats:
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens the target was fed (the rest were cached)
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    rejections: int = 0  # rounds that rejected a draft (the rest accepted all k)
    new_tokens: int = 0
    decode_s: float = 0.0
    prefill_s: float = 0.0
    spec_k_history: list[int] = field(default_factory=list)
    draft_s: float = 0.0  # time in draft proposals (feeding the draft included)
    verify_s: float = 0.0  # time in target verification passes and acceptance
    fell_back_at: int | None = None  # new-token count when plain decoding took over
    stop_reason: str = ""

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts over proposed ones (falls as spec_k grows past the first miss)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def token_acceptance(self) -> float:
        """Per-token acceptance alpha: each draft up to the first miss is one trial."""
        trials = self.accepted + self.rejections
        return self.accepted / trials if trials else 0.0

    @property
    def tokens_per_s(self) -> float:
        later = self.new_tokens - 1
        return later / self.decode_s if later > 0 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate,
                "token_acceptance": self.token_acceptance, "tokens_per_s": self.tokens_per_s}


class SpeculativeGenerator:
    """Generates with `target`, drafting with `draft` (same tokenizer), one prompt at a time."""

    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module,
                 config: GenerateConfig | None = None,
                 speculative: SpeculativeConfig | None = None, *,
                 probe: torch.Tensor | None = None, draft_config: GenerateConfig | None = None
                 ) -> None:
        config = config or GenerateConfig()
        if config.repetition_penalty != 1.0:
            raise ConfigError("speculative decoding needs repetition_penalty 1.0: a penalty "
                              "that depends on the drafted tokens breaks the exactness of "
                              "rejection sampling.")
        self.config = config
        self.spec = speculative or SpeculativeConfig()
        self.target = Generator(target, config, probe=probe)
        self.draft = Generator(draft, draft_config or config, probe=probe)
        self.last_stats = SpeculativeStats()

    @property
    def acceptance_rate(self) -> float:
        return self.last_stats.acceptance_rate

    @property
    def cache_decision(self) -> Any:
        return self.target.cache_decision

    def generate(self, prompt: torch.Tensor | list[int]) -> torch.Tensor:
        tokens = self.target._as_batch(prompt)
        new = list(self.stream(tokens, keep_stop=True))
        return torch.cat([tokens, torch.tensor([new], dtype=torch.long,
                                               device=tokens.device)], dim=1)

    def new_state(self, capacity: int) -> SpeculativeState:
        """Empty target and draft caches for up to `capacity` tokens (drafts included)."""
        t_spec = self.target.cache_spec(1, capacity)
        d_spec = self.draft.cache_spec(1, capacity)
        return SpeculativeState(t_spec, d_spec, t_spec.context(), d_spec.context())

    @torch.no_grad()
    def stream(self, prompt: torch.Tensor | list[int], keep_stop: bool = False,
               state: SpeculativeState | None = None) -> Iterator[int]:
        """Token ids as they are accepted; a stop token ends the stream (yielded only with
        keep_stop).

        state: caches that already hold a prefix of `prompt` (a conversation's earlier
        turns): only the rest is prefilled. Afterwards they may hold rejected or unemitted
        drafts; `state.rollback(n)` trims them to the first n tokens of what was emitted.
        """
        tokens = self.target._as_batch(prompt)
        if tokens.shape[0] != 1:
            raise InputError("speculative decoding takes one prompt at a time (batch 1).")
        T = tokens.shape[1]
        room = self.target._budget(T)
        self.draft._budget(T)
        cfg, sc = self.config, self.spec
        stats = SpeculativeStats(prompt_tokens=T)
        self.last_stats = stats
        if room <= 0:
            stats.stop_reason = "context"
            return
        stop = set(cfg.stop_tokens)
        rng = None
        if cfg.temperature > 0:
            rng = torch.Generator(device=tokens.device)
            rng.manual_seed(cfg.seed if cfg.seed is not None else int(torch.seed() % 2**62))
        state = state or self.new_state(T + room + sc.spec_k_max + 1)
        t_spec, d_spec, t_ctx, d_ctx = state.t_spec, state.d_spec, state.t_ctx, state.d_ctx
        if not d_ctx.position <= t_ctx.position < T:
            raise InputError(f"state: its caches hold {t_ctx.position} (target) and "
                             f"{d_ctx.position} (draft) tokens; the prompt has {T}.",
                             hint="pass a state whose caches hold a prefix of the prompt.")

        started = time.perf_counter()
        stats.prefill_tokens = T - t_ctx.position
        logits = prefill(self.target.model, tokens[:, t_ctx.position :], t_ctx,
                         self.target.plan)
        if d_ctx.position < T - 1:
            prefill(self.draft.model, tokens[:, d_ctx.position : T - 1], d_ctx,
                    self.draft.plan)
        last = _sample(logits, cfg, rng)
        # Invariant: the target cache holds every token before `last`; `pending` is what the
        # draft cache lacks, `last` included.
        pending = torch.cat((tokens[:, T - 1 :], last), dim=1)
        first_at = time.perf_counter()
        stats.prefill_s = first_at - started
        emitted = 0
        greedy = cfg.temperature == 0
        k, low = sc.spec_k, 0
        costs = CostModel(sc.ema)

        def emit(token: int) -> bool:
            """Count a token; True when generation must stop after it."""
            nonlocal emitted
            emitted += 1
            stats.new_tokens = emitted
            if token in stop:
                stats.stop_reason = "stop_token"
                return True
            if emitted >= room:
                stats.stop_reason = "max_new_tokens" if room == cfg.max_new_tokens else "context"
                return True
            return False

        try:
            token = int(last[0, 0])
            done = emit(token)
            if token not in stop or keep_stop:
                yield token
            speculating = True
            # Price a plain decode step (the baseline speculation must beat) with the first
            # PLAIN_PROBES new tokens, decoded plainly; the draft catches up in its next feed.
            probes = PLAIN_PROBES if sc.cost_ratio is None else 0
            while not done:
                n = t_ctx.position  # tokens in the target cache
                if probes:
                    probes -= 1
                    t0 = time.perf_counter()
                    logits = decode_one(self.target.model, last, t_ctx)
                    last = _sample(logits, cfg, rng)
                    costs.plain(time.perf_counter() - t0)
                    pending = torch.cat((pending, last), dim=1)
                    token = int(last[0, 0])
                    done = emit(token)
                    if token not in stop or keep_stop:
                        yield token
                elif speculating:
                    k_now = max(1, min(k, room - emitted))
                    t0 = time.perf_counter()
                    drafts, q = self._draft(d_ctx, pending, k_now, rng, greedy)
                    t1 = time.perf_counter()
                    verify = torch.cat((last, drafts), dim=1)
                    p_logits = self.target.model(verify, t_ctx)[0]
                    t_ctx.position += verify.shape[1]
                    if greedy:
                        a, nxt = accept_greedy(p_logits, drafts[0])
                    else:
                        accepted, chosen = accept_drafts(probabilities(p_logits, cfg)[None], q,
                                                         drafts, rng)
                        a, nxt = int(accepted[0]), int(chosen[0])
                    t2 = time.perf_counter()
                    stats.rounds += 1
                    stats.proposed += k_now
                    stats.accepted += a
                    stats.rejections += a < k_now
                    stats.spec_k_history.append(k_now)
                    stats.draft_s += t1 - t0
                    stats.verify_s += t2 - t1
                    n_new = n + 1 + a
                    t_spec.truncate(n_new)
                    t_ctx.position = n_new
                    keep = min(n_new, d_ctx.position)  # all accepted: the draft lacks d_k
                    d_spec.truncate(keep)
                    d_ctx.position = keep
                    out = drafts[0, :a].tolist() + [nxt]
                    last = torch.tensor([[nxt]], dtype=torch.long, device=tokens.device)
                    pending = torch.cat((verify[:, keep - n : 1 + a], last), dim=1)
                    for token in out:
                        done = emit(token)
                        if token not in stop or keep_stop:
                            yield token
                        if done:
                            break
                    costs.update(k_now, a, t1 - t0, t2 - t1)
                    if sc.adaptive:
                        k = self._next_k(costs)
                    low = low + 1 if not self._pays(costs, k) else 0
                    if stats.rounds >= sc.warmup and low >= sc.patience:
                        speculating = False
                        stats.fell_back_at = emitted
                        log.info("speculative decoding off after %d rounds: acceptance %.2f, "
                                 "expected speedup %.2f", stats.rounds, costs.alpha,
                                 costs.speedup(k))
                else:
                    logits = decode_one(self.target.model, last, t_ctx)
                    last = _sample(logits, cfg, rng)
                    token = int(last[0, 0])
                    done = emit(token)
                    if token not in stop or keep_stop:
                        yield token
        finally:  # also when the caller stops iterating early
            stats.decode_s = time.perf_counter() - first_at
            log.info("speculative: %d tokens, acceptance %.2f over %d rounds, %.1f tokens/s%s",
                     stats.new_tokens, stats.acceptance_rate, stats.rounds, stats.tokens_per_s,
                     "" if stats.fell_back_at is None else
                     f", plain decoding from token {stats.fell_back_at}")

    def _pays(self, costs: CostModel, k: int) -> bool:
        if self.spec.cost_ratio is not None:
            return costs.alpha >= self.spec.disable_below
        return costs.speedup(k) >= 1.0

    def _next_k(self, costs: CostModel) -> int:
        sc = self.spec
        if sc.cost_ratio is not None:  # a fixed ratio, in units of one target pass
            return best_k(costs.alpha, sc.cost_ratio, sc.spec_k_min, sc.spec_k_max)
        assert costs.draft_s is not None
        return best_k(costs.alpha, costs.draft_s, sc.spec_k_min, sc.spec_k_max, costs.verify)

    @torch.no_grad()
    def _draft(self, ctx: Any, pending: torch.Tensor, k: int, rng: torch.Generator | None,
               greedy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed the draft what it lacks, then propose k tokens; returns (drafts (1, k),
        q (1, k, V)). Greedy proposals are the draft's argmax and need no q (None)."""
        model, cfg = self.draft.model, self.config
        logits = model(pending, ctx)[:, -1]
        ctx.position += pending.shape[1]
        drafts, qs = [], []
        for i in range(k):
            if greedy:
                token = logits.argmax(-1, keepdim=True)
            else:
                q = probabilities(logits, cfg)
                token = _draw(q, cfg, rng)
                qs.append(q)
            drafts.append(token)
            if i + 1 < k:
                logits = decode_one(model, token, ctx)
        return torch.cat(drafts, dim=1), (torch.stack(qs, dim=1) if qs else None)


def _draw(probs: torch.Tensor, cfg: GenerateConfig, rng: torch.Generator | None
          ) -> torch.Tensor:
    if cfg.temperature == 0:
        return probs.argmax(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=rng)


def _sample(logits: torch.Tensor, cfg: GenerateConfig, rng: torch.Generator | None
            ) -> torch.Tensor:
    return _draw(probabilities(logits, cfg), cfg, rng)
