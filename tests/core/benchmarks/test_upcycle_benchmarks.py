"""Benchmarks with a teacher and a student: memory, latency, perplexity, accuracy,
generation, and the figures and tables made from them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from smollm import english, smollm, student, truncated_teacher

from caramba.benchmarks.artifacts import write_benchmark_artifacts
from caramba.benchmarks.cloze import cloze_questions
from caramba.benchmarks.runner import run_benchmarks
from caramba.compiler.lower import compile_manifest
from caramba.manifest.diagnostics import ManifestError
from caramba.manifest.schema import BenchmarkSpec
from caramba.upcycle.surgery import upcycle_weights

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair() -> dict[str, torch.nn.Module]:
    teacher = truncated_teacher(2)
    upcycled = student(2)
    upcycle_weights(teacher, upcycled)
    return {"teacher": teacher, "student": upcycled}


def _bench(tmp_path: Path, models: dict, **configs: dict) -> dict:
    specs = [BenchmarkSpec(id=name, config=config) for name, config in configs.items()]
    return {r.id: r for r in run_benchmarks(specs, models, english(), CPU, tmp_path)}


def test_memory_uses_the_cache_accounting_of_the_real_models(tmp_path: Path) -> None:
    full_student = student()
    results = _bench(tmp_path, {"teacher": smollm().model, "student": full_student},
                     memory={"type": "memory", "sequence_lengths": [1024, 4096],
                             "cache_kinds": ["fp16", "q8"], "measure_length": 16})
    memory = results["memory"]
    teacher, pupil = memory.summary["teacher"], memory.summary["student"]
    # shared/DATA.md: 30 layers x 2 x 3 KV heads x 64 x 2 bytes.
    assert teacher["kv_bytes_per_token_fp16"] == 23_040 == teacher["measured_bytes_per_token"]
    assert teacher["kv_bytes_per_token_q8_0"] == 30 * 2 * 3 * 64 // 32 * 34
    assert pupil["kv_bytes_per_token_fp16"] == 30 * 3 * (4 + 8 + 12) * 2 == 4_320
    assert memory.summary["student_vs_teacher"]["kv_reduction"] == pytest.approx(23040 / 4320)
    rows = list(csv.DictReader((tmp_path / "memory.csv").open()))
    q8 = [r for r in rows if r["model"] == "student" and r["cache_kind"] == "q8_0"]
    # 3 heads x 4 semantic values are too narrow for 32-value blocks: kept in fp16.
    assert q8[0]["fp16_fallback"] == "k_geo k_sem v" and q8[0]["kv_bytes_per_token"] == "4320"
    assert [int(r["cache_bytes"]) for r in rows[:2]] == [23_040 * 1024, 23_040 * 4096]


def test_latency_and_perplexity_compare_student_with_teacher(tmp_path: Path, pair) -> None:
    results = _bench(tmp_path, pair,
                     perplexity={"type": "perplexity", "block_size": 32, "batch_size": 2,
                                 "num_batches": 1},
                     latency={"type": "latency", "prompt_lengths": [8, 32],
                              "generation_lengths": [2, 4], "timed_runs": 2})
    ppl, lat = results["perplexity"], results["latency"]
    t, s = ppl.summary["teacher"], ppl.summary["student"]
    assert t["tokens"] == s["tokens"] == 64
    assert ppl.summary["student_vs_teacher"]["perplexity_ratio"] == pytest.approx(
        s["perplexity"] / t["perplexity"])
    assert len(lat.rows) == 2 * 2 * 2 and all(r["decode_tokens_per_s"] > 0 for r in lat.rows)
    assert lat.summary["teacher"]["long_context"] == 32
    assert "long_context_decode_speedup" in lat.summary["student_vs_teacher"]


def test_cloze_questions_are_fixed_and_well_formed() -> None:
    questions = cloze_questions("english", 40, 4, seed=0)
    assert questions == cloze_questions("english", 40, 4, seed=0)
    assert questions != cloze_questions("english", 40, 4, seed=1)
    for q in questions:
        assert q.answer in q.choices and len({c.lower() for c in q.choices}) == 4
        assert q.context and not q.context.endswith(" ")
    names = {q.id.split("#")[0] for q in questions}
    assert any(n.startswith("kjv/") for n in names) and any(n.startswith("shakespeare/")
                                                          for n in names)


def test_the_real_teacher_answers_cloze_questions_far_above_chance(tmp_path: Path) -> None:
    results = _bench(tmp_path, {"teacher": smollm().model},
                     accuracy={"type": "accuracy", "questions": 24})
    summary = results["accuracy"].summary["teacher"]
    assert summary["chance"] == 0.25 and summary["questions"] == 24
    assert summary["accuracy"] >= 0.6


def test_generation_and_every_artifact(tmp_path: Path, pair) -> None:
    results = _bench(tmp_path, pair,
                     perplexity={"type": "perplexity", "block_size": 16, "batch_size": 1,
                                 "num_batches": 1},
                     latency={"type": "latency", "prompt_lengths": [8, 16],
                              "generation_lengths": [2], "timed_runs": 1},
                     memory={"type": "memory", "sequence_lengths": [64, 128],
                             "measure_length": 0},
                     accuracy={"type": "accuracy", "questions": 2},
                     generation={"type": "generation", "prompts": ["In the beginning"],
                                 "max_new_tokens": 3})
    gen = results["generation"]
    assert [r["model"] for r in gen.rows] == ["teacher", "student"]
    written = write_benchmark_artifacts(list(results.values()), tmp_path, "test / upcycle")
    names = sorted(p.name for p in written)
    assert names == ["generation.md", "latency_vs_context.png", "memory_scaling.png",
                     "summary.png", "tables.tex"]
    for name in ("summary.png", "latency_vs_context.png", "memory_scaling.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tex = (tmp_path / "tables.tex").read_text()
    for part in (r"\toprule", r"\midrule", r"\bottomrule", "Perplexity", "KV cache",
                 r"\textbf{Teacher} & \textbf{Student}", "Cloze accuracy"):
        assert part in tex
    md = (tmp_path / "generation.md").read_text()
    assert md.count("**teacher**") == md.count("**student**") == 1


def test_benchmark_configs_are_validated_at_compile_time() -> None:
    with pytest.raises(ManifestError, match=r"benchmarks\[2\]\.config\.cache_kinds.*q9"):
        compile_manifest("preset:smollm2_135m_dba_quick",
                         ["benchmarks.2.config.cache_kinds=[fp16, q9]"])
    with pytest.raises(ManifestError, match=r"benchmarks\[3\]\.config\.corpus"):
        compile_manifest("preset:smollm2_135m_dba_quick", ["benchmarks.3.config.corpus=bible"])
