"""`caramba generate`: a model trained by `caramba run` (tiny DBA manifest, 30 steps on real
English), named by manifest, run folder or checkpoint; streaming, --json, speculative, and
clean errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MANIFEST = """\
version: 2
name: tiny_lm
targets:
  - type: experiment
    name: train
    backend: torch
    task: task.language_modeling
    data: {ref: dataset.tokens, config: {path: "corpus:english", vocab_size: 8192}}
    system:
      ref: system.language_model
      config:
        model:
          type: TransformerModel
          tie_embeddings: true
          embedder: {type: token, vocab_size: 8192, d_model: 64}
          topology:
            type: StackedTopology
            layers:
              - type: ResidualTopology
                layers:
                  - {type: RMSNormLayer, d_model: 64}
                  - {type: AttentionLayer, d_model: 64, n_heads: 2, n_kv_heads: 1, mode: dba,
                     sem_dim: 64, geo_dim: 128, attn_dim: 128}
              - {type: RMSNormLayer, d_model: 64}
              - {type: LinearLayer, d_in: 64, d_out: 8192}
    objective: objective.next_token_ce
    trainer: trainer.standard
    runs:
      - id: short
        seed: 1
        steps: 30
        train: {batch_size: 8, block_size: 64, lr: 0.003, device: cpu, dtype: float32}
    runtime: {sample_prompts: []}
"""


def caramba(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "caramba_cli.main", *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generate")
    (root / "tiny.yml").write_text(MANIFEST)
    result = caramba("run", "tiny.yml", "--runs-dir", "runs", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def test_help_lists_generate_and_chat_without_importing_torch() -> None:
    code = ("import sys; from caramba_cli.main import main; sys.argv = ['caramba', '--help']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and "chat" in result.stdout


def test_generate_from_manifest_streams_text_and_reports_throughput(trained: Path) -> None:
    result = caramba("generate", "tiny.yml", "--runs-dir", "runs", "-p", "And God said",
                     "-n", "12", "--seed", "1", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("And God said") and len(result.stdout) > 20
    assert "12 tokens" in result.stderr and "tokens/s" in result.stderr
    assert "cache " in result.stderr and "(probe" in result.stderr
    assert (trained / "runs/tiny_lm/train/cache_plans.json").is_file()
    again = caramba("generate", "tiny.yml", "--runs-dir", "runs", "-p", "And God said",
                    "-n", "12", "--seed", "1", cwd=trained)
    assert again.stdout == result.stdout and "(persisted" in again.stderr


def test_manifest_run_folder_and_checkpoint_name_the_same_model(trained: Path) -> None:
    refs = ["tiny.yml", "runs/tiny_lm/train", "runs/tiny_lm/train/checkpoints/short",
            "runs/tiny_lm/train/checkpoints/short/step_00000030"]
    outputs = set()
    for ref in refs:
        result = caramba("generate", ref, "--runs-dir", "runs", "-p", "The king", "-n", "8",
                         "--temperature", "0", "--cache-kind", "fp32", cwd=trained)
        assert result.returncode == 0, (ref, result.stderr)
        outputs.add(result.stdout)
    assert len(outputs) == 1


def test_json_output_carries_stats_and_the_cache_decision(trained: Path) -> None:
    result = caramba("generate", "tiny.yml", "--runs-dir", "runs", "-p", "The king", "-n", "5",
                     "--json", cwd=trained)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["tokens"]) <= 5 and out["stats"]["tokens_per_s"] >= 0
    decision = out["cache_decision"]
    assert decision["label"] and {c["label"] for c in decision["candidates"]} >= {"fp32", "q8_0"}


def test_speculative_with_a_draft_keeps_greedy_output(trained: Path) -> None:
    args = ["-p", "The king", "-n", "10", "--temperature", "0", "--cache-kind", "fp32",
            "--runs-dir", "runs"]
    plain = caramba("generate", "tiny.yml", *args, cwd=trained)
    spec = caramba("generate", "tiny.yml", *args, "--draft", "runs/tiny_lm/train", cwd=trained)
    assert spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout and "acceptance 1.00" in spec.stderr
    lookup = caramba("generate", "tiny.yml", *args, "--draft", "lookup", cwd=trained)
    assert lookup.returncode == 0, lookup.stderr
    assert lookup.stdout == plain.stdout and "acceptance" in lookup.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "word " * 100], "but the model's context is 64 tokens"),
        (["-p", "hi", "--cache-kind", "q8"], "unknown cache kind 'q8' — did you mean 'q8_0'"),
        (["-p", "hi", "--cache-budget-mb", "0.000001"], "too small for any cache kind"),
        (["-p", "hi", "--decode-plan", "often"], "decode_plan must be one of auto, fixed"),
    ],
)
def test_bad_input_is_one_clear_paragraph(trained: Path, args, message) -> None:
    result = caramba("generate", "tiny.yml", "--runs-dir", "runs", *args, cwd=trained)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_checkpoints_and_unknown_paths(trained: Path, tmp_path: Path) -> None:
    result = caramba("generate", str(trained / "tiny.yml"), "--runs-dir", str(tmp_path),
                     "-p", "hi", cwd=tmp_path)
    assert result.returncode == 2 and "no checkpoint in" in result.stderr
    (tmp_path / "loose").mkdir()
    result = caramba("generate", "loose", "-p", "hi", cwd=tmp_path)
    assert result.returncode == 2 and "manifest.resolved.yml" in result.stderr
    result = caramba("generate", "nowhere", "-p", "hi", cwd=tmp_path)
    assert result.returncode == 2 and "no such manifest, preset or checkpoint" in result.stderr


def test_corrupt_plan_file_is_a_logged_fallback(trained: Path) -> None:
    plans = trained / "runs/tiny_lm/train/cache_plans.json"
    plans.write_text("{corrupt")
    result = caramba("generate", "tiny.yml", "--runs-dir", "runs", "-p", "hi", "-n", "3",
                     cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "corrupt" in result.stderr and "(probe" in result.stderr
    assert json.loads(plans.read_text())["format"] == "caramba.cache_plans"
