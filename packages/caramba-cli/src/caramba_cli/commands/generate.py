"""`caramba generate`: continue a prompt with a trained model, streaming tokens to stdout.

Given a manifest, the model is the latest checkpoint in runs/<name>/<target>/; given a
checkpoint directory, the run folder among its ancestors says how to rebuild it. Tokens/s
and the chosen KV-cache plan go to stderr (or into the --json object).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from caramba_cli.guard import guarded, stderr

ModelArg = Annotated[str, typer.Argument(
    help="Manifest (file or preset:NAME; uses runs/<name>/<target>/'s latest checkpoint) or a "
    "checkpoint directory inside a run folder.")]
TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Experiment target.")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Where `caramba run` wrote runs.")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option(help="0 is greedy.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Sample from the k likeliest.")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")]
PenaltyOpt = Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages "
                                           "repeats (CTRL).")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampling seed.")]
CacheKindOpt = Annotated[str, typer.Option(
    "--cache-kind", help="fp32 | fp16 | q8_0 | q4_0 | nf4 | auto (measured on held-out text).")]
BudgetOpt = Annotated[float | None, typer.Option("--cache-budget-mb",
                                                  help="KV-cache memory budget for auto.")]
PlanPathOpt = Annotated[Path | None, typer.Option(
    "--cache-plan", help="Persisted auto decisions (default: <run folder>/cache_plans.json).")]
DecodePlanOpt = Annotated[str, typer.Option("--decode-plan", help="auto | fixed | none.")]
DraftOpt = Annotated[str | None, typer.Option(
    "--draft", help="Speculative decoding with a smaller model (manifest or checkpoint), or "
    "'lookup': a draft that copies from the context (pays when the text repeats its input).")]
SpecKOpt = Annotated[int, typer.Option("--spec-k", help="Draft tokens per round (start).")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps.")]
ContextOpt = Annotated[int | None, typer.Option(
    "--max-seq-len", help="Context limit (default: the target's training block size).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


class TextStream:
    """Decode ids incrementally: emit only text that is complete (no half UTF-8 character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        if self.tokenizer is None:
            return f"{token} "
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[self.shown :], len(text)
        return new

    def text(self) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, self.ids))
        return self.tokenizer.decode(self.ids)


def build_session(model_ref: str, *, target: str | None, runs_dir: Path, device: str,
                  config: dict[str, Any], draft: str | None, spec_k: int,
                  cache_plan: Path | None, max_seq_len: int | None) -> Any:
    """Load the model (and draft) and make the generator; returns (generator, loaded)."""
    from caramba.devices import resolve_device
    from caramba.infer.config import GenerateConfig
    from caramba.infer.generate import Generator
    from caramba.infer.load import load_for_inference

    dev = resolve_device(device)
    loaded = load_for_inference(model_ref, target=target, runs_dir=runs_dir, device=dev)
    stop = config.pop("stop_tokens", ())
    eos = getattr(loaded.tokenizer, "eos_id", None)
    cfg = GenerateConfig(
        **config, stop_tokens=tuple(stop) or ((eos,) if eos is not None else ()),
        max_seq_len=max_seq_len or loaded.max_seq_len,
        cache_plan_path=str(cache_plan or loaded.run_dir / "cache_plans.json"))
    if draft is None:
        return Generator(loaded.model, cfg, probe=loaded.probe), loaded
    from caramba.infer.speculative import SpeculativeConfig, SpeculativeGenerator

    if draft == "lookup":
        import torch

        from caramba.infer.lookup import ContextLookupDraft

        with torch.no_grad():  # the vocabulary: the width of the target's logits
            vocab = loaded.model(torch.zeros(1, 1, dtype=torch.long, device=dev)).shape[-1]
        small_model = ContextLookupDraft(vocab)
    else:
        small_model = load_for_inference(draft, runs_dir=runs_dir, device=dev).model
    spec = SpeculativeConfig(spec_k=spec_k, spec_k_max=max(8, spec_k))
    return SpeculativeGenerator(loaded.model, small_model, cfg, spec, probe=loaded.probe), loaded


def describe(generator: Any) -> str:
    """One line: throughput, acceptance (speculative) and the cache plan."""
    stats = generator.last_stats
    parts = [f"{stats.new_tokens} tokens", f"{stats.tokens_per_s:.1f} tokens/s"]
    if hasattr(stats, "acceptance_rate"):
        parts.append(f"acceptance {stats.acceptance_rate:.2f} over {stats.rounds} rounds")
    decision = generator.cache_decision
    if decision is not None:
        parts.append(decision.summary())
    else:
        kinds = getattr(stats, "cache_kinds", None) or {"all": generator.config.cache_kind}
        parts.append("cache " + ", ".join(f"{n} {k}" for n, k in kinds.items()))
    return " · ".join(parts)


def generate_command(
    model: ModelArg,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")],
    target: TargetOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    max_new_tokens: MaxNewOpt = 64,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    repetition_penalty: PenaltyOpt = 1.0,
    seed: SeedOpt = None,
    cache_kind: CacheKindOpt = "auto",
    cache_budget_mb: BudgetOpt = None,
    cache_plan: PlanPathOpt = None,
    decode_plan: DecodePlanOpt = "auto",
    draft: DraftOpt = None,
    spec_k: SpecKOpt = 4,
    device: DeviceOpt = "auto",
    max_seq_len: ContextOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object at the end "
                                           "instead of streaming.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Continue PROMPT with a trained model; tokens stream to stdout as they are chosen."""

    def work() -> None:
        generator, loaded = build_session(
            model, target=target, runs_dir=runs_dir, device=device, draft=draft,
            spec_k=spec_k, cache_plan=cache_plan, max_seq_len=max_seq_len,
            config=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                        cache_kind=cache_kind, cache_budget_mb=cache_budget_mb,
                        decode_plan=decode_plan))
        tokenizer = loaded.tokenizer
        if tokenizer is None:
            from caramba.errors import InputError

            raise InputError(f"{loaded.description}: the dataset has no tokenizer, so text "
                             "prompts cannot be encoded.",
                             hint="set data.config.tokenizer in the manifest.")
        ids = tokenizer.encode(prompt)
        stream = TextStream(tokenizer)
        if not json_out:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        for token in generator.stream(ids):
            piece = stream.push(token)
            if piece and not json_out:
                sys.stdout.write(piece)
                sys.stdout.flush()
        summary = describe(generator)
        if json_out:
            decision = generator.cache_decision
            sys.stdout.write(json.dumps({
                "prompt": prompt, "completion": stream.text(), "tokens": stream.ids,
                "model": loaded.description, "stats": generator.last_stats.to_dict(),
                "cache_decision": None if decision is None else decision.to_dict(),
            }, indent=2) + "\n")
        else:
            sys.stdout.write("\n")
            stderr.print(f"[dim]{summary}[/]", highlight=False)

    guarded(work, debug)
