"""Paper-ready artifacts from benchmark results: figures (PNG) and LaTeX tables.

    summary.png             perplexity, decode tokens/s at the longest context, KV bytes/token
    latency_vs_context.png  decode tokens/s against prompt length, one line per model
    memory_scaling.png      KV-cache size against sequence length, per model and cache kind
    tables.tex              booktabs table: metric, one column per model (+ change)
    generation.md           generations side by side

Each file is written only when the benchmarks it needs ran (perplexity, latency, memory,
generation, by `type`), atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from caramba.atomic import atomic_write_bytes, atomic_write_text
from caramba.benchmarks.base import BenchmarkResult
from caramba.benchmarks.generation import side_by_side_markdown

COLORS = {"teacher": "#4C72B0", "student": "#DD8452", "model": "#55A868"}


def _first(results: list[BenchmarkResult], kind: str) -> BenchmarkResult | None:
    return next((r for r in results if r.kind == kind), None)


def _models(result: BenchmarkResult) -> list[str]:
    return [name for name in result.summary if name != "student_vs_teacher"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis: Any) -> None:
    """Log scale with plain numbers (512, 1024) instead of powers (2^9)."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _bars(ax: Any, values: dict[str, float], title: str, fmt: str) -> None:
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names],
                  color=[COLORS.get(n, "#8172B3") for n in names])
    for bar, name in zip(bars, names, strict=True):
        ax.annotate(format(values[name], fmt), (bar.get_x() + bar.get_width() / 2,
                                                 bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)


def summary_png(results: list[BenchmarkResult], path: Path, title: str) -> Path | None:
    ppl, lat, mem = (_first(results, k) for k in ("perplexity", "latency", "memory"))
    panels = [p for p in (ppl, lat, mem) if p is not None]
    if not panels:
        return None
    plt = _pyplot()
    # One panel per benchmark present, so a target without e.g. `memory` leaves no blank.
    fig, axes = plt.subplots(1, len(panels), figsize=(11 * len(panels) / 3 + 0.4, 3.8),
                             dpi=120, squeeze=False)
    slots = iter(axes[0])
    if ppl is not None:
        _bars(next(slots), {n: ppl.summary[n]["perplexity"] for n in _models(ppl)},
              "held-out perplexity (lower is better)", ".2f")
    if lat is not None:
        context = lat.summary[_models(lat)[0]]["long_context"]
        _bars(next(slots), {n: lat.summary[n]["long_context_decode_tokens_per_s"]
                            for n in _models(lat)},
              f"decode tokens/s at {context} tokens of context", ".1f")
    if mem is not None:
        kind = next(k.removeprefix("kv_bytes_per_token_")
                    for k in mem.summary[_models(mem)[0]] if k.startswith("kv_bytes_per_token_"))
        _bars(next(slots), {n: mem.summary[n][f"kv_bytes_per_token_{kind}"]
                            for n in _models(mem)},
              f"KV-cache bytes per token ({kind})", ",.0f")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def latency_png(result: BenchmarkResult, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for name in _models(result):
        rows = [r for r in result.rows if r["model"] == name]
        longest = max(r["gen_len"] for r in rows)
        points = sorted((r["prompt_len"], r["decode_tokens_per_s"]) for r in rows
                        if r["gen_len"] == longest)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, "o-", color=COLORS.get(name), label=f"{name} (decode {longest} tokens)")
    ax.set_xscale("log", base=2)
    _plain_log_axis(ax.xaxis)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def memory_png(result: BenchmarkResult, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    kinds = list(dict.fromkeys(r["cache_kind"] for r in result.rows))
    styles = ["-", "--", ":", "-."]
    for name in _models(result):
        for i, kind in enumerate(kinds):
            rows = [r for r in result.rows if r["model"] == name and r["cache_kind"] == kind]
            if not rows:
                continue
            points = sorted((r["seq_len"], r["cache_bytes"] / 2**20) for r in rows)
            xs, ys = zip(*points, strict=True)
            fallback = rows[0].get("fp16_fallback")
            label = f"{name} {kind}" + (f" ({fallback} kept fp16)" if fallback else "")
            ax.plot(xs, ys, styles[i % len(styles)], marker="o", color=COLORS.get(name),
                    label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("KV cache (MiB, batch of one)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%") \
        .replace("&", r"\&").replace("#", r"\#")


def tables_tex(results: list[BenchmarkResult], title: str) -> str | None:
    """One booktabs table: a row per headline metric, a column per model."""
    rows: list[tuple[str, dict[str, float], str, bool]] = []  # label, values, format, higher?
    ppl, lat, mem, acc = (_first(results, k) for k in ("perplexity", "latency", "memory",
                                                        "accuracy"))
    if ppl is not None:
        rows.append((r"Perplexity $\downarrow$",
                     {n: ppl.summary[n]["perplexity"] for n in _models(ppl)}, ".2f", False))
    if lat is not None:
        context = lat.summary[_models(lat)[0]]["long_context"]
        rows.append((rf"Decode tok/s at {context} ctx $\uparrow$",
                     {n: lat.summary[n]["long_context_decode_tokens_per_s"]
                      for n in _models(lat)}, ".1f", True))
    if mem is not None:
        for key in mem.summary[_models(mem)[0]]:
            if key.startswith("kv_bytes_per_token_"):
                kind = key.removeprefix("kv_bytes_per_token_")
                rows.append((rf"KV cache (bytes/tok, {_tex(kind)}) $\downarrow$",
                             {n: mem.summary[n][key] for n in _models(mem)}, ",.0f", False))
    if acc is not None:
        rows.append((r"Cloze accuracy $\uparrow$",
                     {n: acc.summary[n]["accuracy"] for n in _models(acc)}, ".3f", True))
    if not rows:
        return None
    models = list(dict.fromkeys(n for _, values, _, _ in rows for n in values))
    compare = "teacher" in models and "student" in models
    header = ["\\textbf{Metric}"] + [f"\\textbf{{{_tex(m.capitalize())}}}" for m in models]
    if compare:
        header.append("\\textbf{Student / teacher}")
    lines = [r"\begin{table}[h]", r"\centering", rf"\caption{{{_tex(title)}}}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for label, values, fmt, _ in rows:
        cells = [label] + [format(values[m], fmt).replace(",", "{,}") if m in values else "--"
                           for m in models]
        if compare:
            t, s = values.get("teacher"), values.get("student")
            cells.append(f"{s / t:.2f}$\\times$" if t and s is not None else "--")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_benchmark_artifacts(results: list[BenchmarkResult], out_dir: Path,
                              title: str) -> list[Path]:
    """Write every artifact the results allow; returns the paths written."""
    written: list[Path] = []
    path = summary_png(results, out_dir / "summary.png", title)
    if path is not None:
        written.append(path)
    lat, mem, gen = (_first(results, k) for k in ("latency", "memory", "generation"))
    if lat is not None and lat.rows:
        written.append(latency_png(lat, out_dir / "latency_vs_context.png",
                                   f"{title}: decode speed vs context"))
    if mem is not None and mem.rows:
        written.append(memory_png(mem, out_dir / "memory_scaling.png",
                                  f"{title}: KV-cache memory"))
    tex = tables_tex(results, title)
    if tex is not None:
        atomic_write_text(out_dir / "tables.tex", tex)
        written.append(out_dir / "tables.tex")
    if gen is not None and gen.rows:
        atomic_write_text(out_dir / "generation.md", side_by_side_markdown(gen))
        written.append(out_dir / "generation.md")
    return written
