"""Speculative decoding on real held-out text: speedup, acceptance, spec_k and where the time
goes, for greedy and sampled decoding, plain and speculative measured side by side (each
prompt decoded plainly, then speculatively, in alternation), one process.

Pairs:
- SmolLM2-135M (pretrained, bfloat16) + a draft distilled from it by caramba (teacher greedy
  labels on the corpus's training text, 4096-token pruned vocabulary; infer.distill, cached
  under CARAMBA_CACHE, trained on first use), and the same draft on 4x the labels and 600
  steps (--more-labels; ~12 min of one-off labelling and training);
- SmolLM2-135M + its own first 4 blocks (early exit; no training) for reference;
- a 256-wide 4-block caramba model + a 64-wide 1-block one (8192-token BPE), both trained here;
- SmolLM2-135M + a draft that copies from the context (caramba.infer.lookup, prompt lookup
  decoding), alone and as an override of the distilled draft (LookupAugmentedDraft), on a
  quoting task and on free continuation.

Prompts: 48-token windows of the validation documents of KJV and of Shakespeare (never
trained on). The quoting task ("<text> quote") gives a 96-token validation passage, a blank
line and the passage's first 8 tokens again, so a continuation that quotes it copies it. Throughput
counts decode only (tokens after the first / time after the first).

    python benchmarks/speculative.py            # CPU, a few minutes (plus one-off training)
    python benchmarks/speculative.py --no-smollm2 --no-tiny --prompts 8 --tag cpu_lookup

Results: benchmarks/results/speculative_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from caramba.cache import CacheSpec
from caramba.infer import GenerateConfig, Generator, SpeculativeGenerator
from caramba.infer.generate import placement, prefill
from caramba.infer.speculative import SpeculativeConfig

RESULTS = Path(__file__).parent / "results"
TARGET = 1.5  # speedup wanted where acceptance >= 0.6


@dataclass
class Row:
    target: str
    draft: str
    text: str
    mode: str  # greedy | T=<temperature>
    prompts: int
    new_tokens: int
    plain_tokens_per_s: float
    spec_tokens_per_s: float
    speedup: float
    acceptance: float  # accepted / proposed drafts
    alpha: float  # per-token acceptance: accepted / (accepted + rejections)
    mean_spec_k: float
    rounds: int
    draft_cost: float  # one draft step / one target decode step
    verify_cost: float  # target pass over mean_spec_k + 1 tokens / one target decode step
    draft_share: float  # of speculative decode time
    verify_share: float
    fell_back: int
    exact: str  # greedy: prompts whose speculative output == plain output ("3/4")


@torch.no_grad()
def pass_ms(model: torch.nn.Module, prompt: list[int], tokens: int, reps: int = 6) -> float:
    """Best time of one forward over `tokens` new tokens after a cached prompt."""
    device, _ = placement(model)
    spec = CacheSpec(kind="fp16", capacity=len(prompt) + tokens + 2)
    ctx = spec.context()
    ids = torch.tensor([prompt], device=device)
    prefill(model, ids, ctx, spec.plan)
    x = ids[:, :tokens]
    n = ctx.position
    best = float("inf")
    for _ in range(reps + 1):
        started = time.perf_counter()
        model(x, ctx)
        best = min(best, time.perf_counter() - started)
        spec.truncate(n)
        ctx.position = n
    return 1000 * best


def measure(target, draft, names: tuple[str, str, str], prompts: list[list[int]],
            new_tokens: int, temperature: float, spec_k: int, rounds: int,
            adaptive: bool = True) -> Row:
    cfg = GenerateConfig(temperature=temperature, max_new_tokens=new_tokens,
                         cache_kind="fp16", decode_plan="auto", seed=0)
    plain = Generator(target, cfg)
    spec = SpeculativeGenerator(target, draft, cfg,
                                SpeculativeConfig(spec_k=spec_k, adaptive=adaptive))
    plain.generate(prompts[0][:8])  # warm-up
    spec.generate(prompts[0][:8])
    p_tok = p_s = s_tok = s_s = 0.0
    stats = []
    same = 0
    for _ in range(rounds):
        for prompt in prompts:
            a = plain.generate(prompt)
            p_tok += plain.last_stats.new_tokens - 1
            p_s += plain.last_stats.decode_s
            b = spec.generate(prompt)
            s_tok += spec.last_stats.new_tokens - 1
            s_s += spec.last_stats.decode_s
            stats.append(spec.last_stats)
            same += bool(torch.equal(a, b))
    proposed = sum(s.proposed for s in stats)
    accepted = sum(s.accepted for s in stats)
    rejections = sum(s.rejections for s in stats)
    ks = [k for s in stats for k in s.spec_k_history]
    mean_k = sum(ks) / max(len(ks), 1)
    step = pass_ms(target, prompts[0], 1)
    verify = pass_ms(target, prompts[0], max(1, round(mean_k)) + 1)
    decode = sum(s.decode_s for s in stats)
    plain_rate, spec_rate = p_tok / p_s, s_tok / s_s
    mode = "greedy" if temperature == 0 else f"T={temperature:g}"
    return Row(names[0], names[1], names[2], mode if adaptive else f"{mode}, k={spec_k} fixed",
               len(prompts), new_tokens, plain_rate, spec_rate,
               spec_rate / plain_rate, accepted / max(proposed, 1),
               accepted / max(accepted + rejections, 1), mean_k, sum(s.rounds for s in stats),
               pass_ms(draft, prompts[0], 1) / step, verify / step,
               sum(s.draft_s for s in stats) / decode, sum(s.verify_s for s in stats) / decode,
               sum(s.fell_back_at is not None for s in stats),
               f"{same}/{len(stats)}" if temperature == 0 else "")


def prompts_from(tokens: np.ndarray, n: int, length: int = 48) -> list[list[int]]:
    step = (len(tokens) - length - 1) // n
    return [np.asarray(tokens[i * step : i * step + length]).astype(np.int64).tolist()
            for i in range(n)]


def quote_prompts(tokens: np.ndarray, n: int, separator: list[int], passage: int = 96,
                  cue: int = 8) -> list[list[int]]:
    """A passage of real text, a blank line, then its first `cue` tokens again: quoting it
    means copying."""
    return [p + separator + p[:cue] for p in prompts_from(tokens, n, passage)]


@functools.cache
def smollm2(n_prompts: int) -> tuple[torch.nn.Module, dict[str, list[list[int]]]]:
    """The SmolLM2 target (bfloat16: the dtype it decodes in), loaded once per run, and its
    prompts: "kjv", "shakespeare" (free continuation) and "kjv quote", "shakespeare quote"."""
    from caramba.infer.distill import DraftConfig, corpus_data, load_teacher

    teacher, tokenizer = load_teacher(DraftConfig())
    separator = tokenizer.encode("\n\n")
    texts = {}
    for name in ("kjv", "shakespeare"):
        val = corpus_data(DraftConfig(corpus=f"corpus:{name}")).val.data
        texts[name] = prompts_from(val, n_prompts)
        texts[f"{name} quote"] = quote_prompts(val, n_prompts, separator)
    return teacher, texts


def record(rows: list[Row], row: Row) -> None:
    rows.append(row)
    print(json.dumps(asdict(row)), flush=True)


def smollm2_rows(args) -> list[Row]:
    from torch import nn

    from caramba.infer.distill import DraftConfig, distilled_draft
    from caramba.models.language_model import LanguageModel
    from caramba.topologies.nested import NestedTopology
    from caramba.topologies.stacked import StackedTopology

    cfg = DraftConfig()
    teacher, prompts_by_text = smollm2(args.prompts)
    texts = {name: prompts_by_text[name] for name in ("kjv", "shakespeare")}
    # The quoting task for the first (base) draft only: can a small model copy?
    quotes = {f"{name} quote": prompts_by_text[f"{name} quote"] for name in texts}
    rows: list[Row] = []
    name = "SmolLM2-135M (bf16)"
    variants = [(0, 0)] + [tuple(int(v) for v in spec.split(":"))
                           for spec in args.more_labels.split(",") if spec]
    for labels, steps in variants:
        vcfg = replace(cfg, label_tokens=labels, steps=steps) if labels else cfg
        started = time.perf_counter()
        vdraft = distilled_draft(vcfg, teacher=teacher)
        print(f"distilled draft ready in {time.perf_counter() - started:.0f} s", flush=True)
        vname = (f"distilled {vcfg.n_layers}x{vcfg.d_model}, {vcfg.keep_tokens}-token vocab, "
                 f"{vcfg.steps} steps on {vcfg.label_tokens // 1024}k teacher labels")
        if not labels:
            draft, dname = vdraft, vname
        for temperature in (0.0, args.temperature):
            for text, prompts in texts.items():
                record(rows, measure(teacher, vdraft, (name, vname, text), prompts,
                                     args.tokens, temperature, args.spec_k, args.rounds))
        for text, prompts in quotes.items() if not labels else ():
            for k, adaptive in ((args.spec_k, True), (2, False)):
                record(rows, measure(teacher, vdraft, (name, vname, text), prompts,
                                     args.tokens, 0.0, k, args.rounds, adaptive))
    for spec in args.exit_drafts.split(",") if args.exit_drafts else []:
        layer, adapter, steps, labels = (int(v) for v in spec.split(":"))
        exit_cfg = DraftConfig(exit_layer=layer, adapter_layers=adapter, steps=steps,
                               label_tokens=labels, lr=1e-3)
        started = time.perf_counter()
        exit_draft = distilled_draft(exit_cfg, teacher=teacher)
        print(f"exit draft {spec} ready in {time.perf_counter() - started:.0f} s", flush=True)
        what = (f"SmolLM2 first {layer} of 30 blocks + trained {adapter}-sublayer adapter, "
                f"4096-token head ({steps} steps on {labels // 1024}k labels)")
        for text, prompts in texts.items():
            record(rows, measure(teacher, exit_draft, (name, what, text), prompts,
                                 args.tokens, 0.0, args.spec_k, args.rounds))
    nested, norm, head = teacher.topology.layers
    early = LanguageModel(teacher.embedder, StackedTopology(nn.ModuleList([
        NestedTopology(nn.ModuleList(list(nested.layers[:8]))), norm, head]))).eval()
    record(rows, measure(teacher, early, (name, "SmolLM2 first 4 of 30 blocks (early exit)",
                                          "kjv"), texts["kjv"], args.tokens, 0.0, args.spec_k, 1))
    fp32 = copy.deepcopy(teacher).float()
    record(rows, measure(fp32, draft, ("SmolLM2-135M (fp32)", dname, "kjv"), texts["kjv"],
                         args.tokens, 0.0, args.spec_k, 1))
    return rows


def lookup_rows(args) -> list[Row]:
    from caramba.infer import ContextLookupDraft

    teacher, texts = smollm2(args.prompts)
    vocab = int(teacher.embedder.num_embeddings)
    draft = ContextLookupDraft(vocab, max_ngram=3)
    name, dname = "SmolLM2-135M (bf16)", "context lookup (n-grams 3..1, no weights)"
    rows: list[Row] = []
    for label in ("kjv quote", "kjv", "shakespeare quote"):
        # Adaptive spec_k maximises tokens/s and so drafts long (acceptance per proposed
        # token falls); fixed k=2 and k=3 rows show the same pair at short draft lengths.
        settings = [(0.0, args.spec_k, True), (args.temperature, args.spec_k, True)]
        if label.endswith("quote"):
            settings[1:1] = [(0.0, 2, False), (0.0, 3, False)]
        for temperature, k, adaptive in settings:
            record(rows, measure(teacher, draft, (name, dname, label), texts[label],
                                 args.tokens, temperature, k, args.rounds, adaptive))
    return rows


def hybrid_rows(args) -> list[Row]:
    """The distilled draft with context copies where the newest bigram occurred before."""
    from caramba.infer import ContextLookupDraft, LookupAugmentedDraft
    from caramba.infer.distill import DraftConfig, distilled_draft

    cfg = DraftConfig()
    teacher, texts = smollm2(args.prompts)
    small = distilled_draft(cfg, teacher=teacher)
    vocab = int(teacher.embedder.num_embeddings)
    draft = LookupAugmentedDraft(small, ContextLookupDraft(vocab, max_ngram=3, min_ngram=2))
    name = "SmolLM2-135M (bf16)"
    dname = (f"distilled {cfg.n_layers}x{cfg.d_model} + context copies (n-grams 3..2)")
    rows: list[Row] = []
    for text in ("kjv", "shakespeare"):
        for label, settings in ((text, ((args.spec_k, True),)),
                                (f"{text} quote", ((args.spec_k, True), (2, False)))):
            for k, adaptive in settings:
                record(rows, measure(teacher, draft, (name, dname, label), texts[label],
                                     args.tokens, 0.0, k, args.rounds, adaptive))
    return rows


def tiny_rows(args) -> list[Row]:
    from caramba.infer import tiny

    data = tiny.english()
    val = tiny.validation_tokens(data)
    prompts = prompts_from(val.numpy(), args.prompts)
    target = tiny.tiny_model(tiny.TinyConfig(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                                             d_ff=704, steps=300), data=data)
    draft = tiny.tiny_model(tiny.DRAFT, data=data)
    rows: list[Row] = []
    for temperature in (0.0, args.temperature):
        record(rows, measure(target, draft, ("tiny-256x4 (300 steps)", "tiny-64x1 (120 steps)",
                                             "kjv+shakespeare"), prompts, args.tokens,
                             temperature, args.spec_k, args.rounds))
    return rows


def expected_speedup(alpha: float, k: float, draft_cost: float, verify_cost: float) -> float:
    """Leviathan et al.'s tokens per round over its cost, with the verify pass's measured
    price (1 on a memory-bound accelerator, more on a CPU for a compute-bound model)."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (k * draft_cost + verify_cost)


def markdown(result: dict) -> str:
    m = result["machine"]
    out = [f"# Speculative decoding ({m['device_name']})", "",
           f"torch {m['torch']}, {m['threads']} intra-op thread(s); {m['when']}; "
           f"{result['args']['prompts']} prompts of 48 tokens per text (quote tasks: 96 + 8) x "
           f"{result['args']['rounds']} round(s), {result['args']['tokens']} new tokens each; "
           "plain and speculative decoding alternate prompt by prompt.", "",
           "| target | draft | text | mode | plain tok/s | spec tok/s | speedup | acceptance "
           "| α per token | mean spec_k | draft/target step | verify/target step | expected "
           "| time in draft / verify | greedy = plain |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        exp = expected_speedup(r["alpha"], r["mean_spec_k"], r["draft_cost"], r["verify_cost"])
        out.append(
            f"| {r['target']} | {r['draft']} | {r['text']} | {r['mode']} | "
            f"{r['plain_tokens_per_s']:.1f} | {r['spec_tokens_per_s']:.1f} | "
            f"**{r['speedup']:.2f}** | {r['acceptance']:.2f} | {r['alpha']:.2f} | "
            f"{r['mean_spec_k']:.1f} | {r['draft_cost']:.3f} | {r['verify_cost']:.2f} | "
            f"{exp:.2f} | {r['draft_share']:.0%} / {r['verify_share']:.0%} | {r['exact']} |")
    out += ["", "## Targets (speedup >= 1.5x where acceptance >= 0.6)", ""]
    for t in result["targets"]:
        out.append(f"- {'MET' if t['met'] else 'MISSED'}: {t['what']}: speedup "
                   f"{t['speedup']:.2f}x at acceptance {t['acceptance']:.2f}.")
    if not result["targets"]:
        best = max(result["rows"], key=lambda r: r["acceptance"])
        fast = max(result["rows"], key=lambda r: r["speedup"])
        out.append(f"- MISSED: no pair reached acceptance 0.6 (highest {best['acceptance']:.2f}"
                   f", {best['target']} + {best['draft']}, {best['text']}, {best['mode']}), so "
                   f"the conditional target is not demonstrated. Fastest: {fast['speedup']:.2f}x"
                   f" ({fast['target']} + {fast['draft']}, {fast['text']}, {fast['mode']}, "
                   f"acceptance {fast['acceptance']:.2f}).")
    out += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"


NOTES = [
    "acceptance = accepted drafts / proposed drafts (the issue's measure; it falls as "
    "spec_k grows past the first miss); α = per-token acceptance (drafts accepted over "
    "drafts judged up to each round's first miss).",
    "expected = Leviathan et al.'s (1 - α^(k+1)) / ((1 - α)(k c + v)) with the measured draft "
    "cost c and verify cost v (a pass over k + 1 tokens, in target decode steps). On this CPU "
    "a float32 pass over several tokens costs well over one step (MKL's small-M sgemm), "
    "while bfloat16 (AVX512-BF16) stays memory-bound: the target runs in bfloat16, plain and "
    "speculative alike.",
    "The distilled draft is trained once (teacher labelling + standard trainer, CPU) and "
    "cached under CARAMBA_CACHE/drafts/; its vocabulary is the 4096 tokens the teacher "
    "predicts most often on the training text, so q is zero elsewhere and rejection sampling "
    "stays exact.",
    "greedy = plain counts prompts whose speculative output equals plain greedy decoding "
    "token for token. Speculative greedy is the target's argmax at every position (tests pin "
    "it in float32), but a bfloat16 pass over k + 1 tokens rounds differently from a "
    "one-token pass, so near-ties can flip and the two greedy texts part ways there.",
    "time in draft / verify: shares of speculative decode time; the rest is plain decoding "
    "after a fallback (expected speedup below 1 for `patience` rounds) and bookkeeping.",
    "Why acceptance stays low: every draft trained on ~100k teacher labels or fewer "
    "agrees with SmolLM2's argmax on about 40% of held-out "
    "positions teacher-forced (development runs: 2x256 standalone 0.32-0.38, first 2 blocks + "
    "adapter 0.40, first 4 + adapter 0.41, first 12 + adapter 0.40), with train loss far "
    "below validation loss. The untrained 4-block early exit agrees on 6%.",
    "More labels lift acceptance little: 4x the teacher labels (384k, labelled in bfloat16 in "
    "~7 min, one-off) and 600 steps narrow the train/val gap (final train loss 2.57, val "
    "3.05), but the draft's acceptance and speedup (its rows) move only within this "
    "benchmark's run-to-run noise (4 prompts per text; a run beside a test job measured it at "
    "1.14/1.18x greedy), nowhere near 0.6: the small draft is bound by capacity or objective "
    "as much as by data.",
    "The context-lookup draft (caramba.infer.lookup) holds no weights: it proposes the "
    "tokens that followed the latest earlier occurrence of the newest 3-, 2- or 1-gram. On "
    "the quoting task the target copies the passage and so does the draft; on free "
    "continuation it rarely matches and the generator falls back to plain decoding.",
    "Shared 2-core machine under load from other jobs: absolute tokens/s vary run to run; "
    "each ratio comes from plain and speculative runs interleaved prompt by prompt.",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="prompts per text")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per prompt")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--spec-k", type=int, default=4, help="starting draft length")
    ap.add_argument("--temperature", type=float, default=0.7, help="the sampling rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exit-drafts", default="12:2:100:32768",
                    help="exit drafts LAYER:ADAPTER_SUBLAYERS:STEPS:LABELS, comma-separated")
    ap.add_argument("--more-labels", default="393216:600",
                    help="extra distilled drafts LABEL_TOKENS:STEPS (bf16 labelling), "
                         "comma-separated")
    ap.add_argument("--no-smollm2", dest="smollm2", action="store_false")
    ap.add_argument("--no-tiny", dest="tiny", action="store_false")
    ap.add_argument("--no-lookup", dest="lookup", action="store_false")
    ap.add_argument("--no-hybrid", dest="hybrid", action="store_false",
                    help="skip the distilled draft + context copies rows")
    ap.add_argument("--tag", default="cpu", help="result file suffix")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    if args.smollm2:
        rows += smollm2_rows(args)
    if args.lookup:
        rows += lookup_rows(args)
    if args.hybrid:
        rows += hybrid_rows(args)
    if args.tiny:
        rows += tiny_rows(args)
    result = {
        "machine": {"device_name": f"{platform.processor() or platform.machine()} CPU, "
                                   f"{torch.get_num_threads()} thread(s)",
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "when": time.strftime("%Y-%m-%d %H:%M")},
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [asdict(r) for r in rows], "notes": NOTES,
        "targets": [{"what": f"{r.target} + {r.draft}, {r.text}, {r.mode}",
                     "speedup": r.speedup, "acceptance": r.acceptance,
                     "met": r.speedup >= TARGET}
                    for r in rows if r.acceptance >= 0.6],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"speculative_{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"speculative_{args.tag}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
