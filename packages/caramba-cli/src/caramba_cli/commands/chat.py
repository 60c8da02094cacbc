"""`caramba chat`: an interactive session with a trained model.

Each line you type is appended to the conversation and the model continues it; replies
stream as they are generated, followed by a line with tokens/s, the tokens prefilled and the
cache plan (stderr). The KV cache lives across turns, so a turn prefills only its own new
tokens (caramba.infer.session; with --draft both the target's and the draft's caches); when
the conversation outgrows the context it is trimmed from the front and the cache rebuilt.
Commands: /reset forgets the conversation, /stats prints the last reply's figures as JSON,
/exit (or end of input) leaves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from caramba_cli.commands.generate import (
    BudgetOpt,
    CacheKindOpt,
    ContextOpt,
    DebugOpt,
    DecodePlanOpt,
    DeviceOpt,
    DraftOpt,
    MaxNewOpt,
    ModelArg,
    PenaltyOpt,
    PlanPathOpt,
    RunsDirOpt,
    SeedOpt,
    SpecKOpt,
    TargetOpt,
    TemperatureOpt,
    TextStream,
    TopKOpt,
    TopPOpt,
    build_session,
    describe,
)
from caramba_cli.guard import guarded, stderr

HELP = "commands: /reset, /stats, /exit"


def chat_command(
    model: ModelArg,
    target: TargetOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    max_new_tokens: MaxNewOpt = 48,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 50,
    top_p: TopPOpt = None,
    repetition_penalty: PenaltyOpt = 1.1,
    seed: SeedOpt = None,
    cache_kind: CacheKindOpt = "auto",
    cache_budget_mb: BudgetOpt = None,
    cache_plan: PlanPathOpt = None,
    decode_plan: DecodePlanOpt = "auto",
    draft: DraftOpt = None,
    spec_k: SpecKOpt = 4,
    device: DeviceOpt = "auto",
    max_seq_len: ContextOpt = None,
    newline_ends_reply: Annotated[bool, typer.Option(
        "--newline-ends-reply/--no-newline-ends-reply",
        help="Stop a reply at a blank line.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Talk to a trained model: type a line, read the continuation; /exit to leave."""

    def work() -> None:
        generator, loaded = build_session(
            model, target=target, runs_dir=runs_dir, device=device, draft=draft,
            spec_k=spec_k, cache_plan=cache_plan, max_seq_len=max_seq_len,
            config=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, repetition_penalty=1.0 if draft else repetition_penalty,
                        seed=seed, cache_kind=cache_kind, cache_budget_mb=cache_budget_mb,
                        decode_plan=decode_plan))
        from caramba.infer.session import Conversation

        tokenizer = loaded.tokenizer
        if tokenizer is None:
            from caramba.errors import InputError

            raise InputError(f"{loaded.description}: the dataset has no tokenizer.",
                             hint="set data.config.tokenizer in the manifest.")
        context = generator.config.max_seq_len or loaded.max_seq_len
        stderr.print(f"[bold]caramba chat[/] · {loaded.description} · context {context} "
                     f"tokens · {HELP}", highlight=False)
        conversation = Conversation(generator, context)
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            command = text.strip()
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                conversation.reset()
                stderr.print("[dim]conversation cleared[/]")
                continue
            if command == "/stats":
                sys.stdout.write(json.dumps(generator.last_stats.to_dict()) + "\n")
                sys.stdout.flush()
                continue
            if not command:
                continue
            tokens = conversation.reply(tokenizer.encode(text + "\n"))
            stream = TextStream(tokenizer)
            try:
                for token in tokens:
                    piece = stream.push(token)
                    if piece:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                    if newline_ends_reply and stream.text().endswith("\n\n"):
                        break
            finally:
                tokens.close()
            sys.stdout.write("\n" if not stream.text().endswith("\n") else "")
            sys.stdout.flush()
            stats = generator.last_stats
            stderr.print(f"[dim]prefilled {stats.prefill_tokens} of {stats.prompt_tokens} "
                         f"tokens · {describe(generator)}[/]", highlight=False)

    guarded(work, debug)
