"""Bad checkpoints through `caramba run`: the upcycle preset pointed at a GGUF of another
architecture, a truncated GGUF, a corrupt safetensors file and a teacher whose shapes differ
from the manifest's student each end in one error paragraph naming the file and the
tensor or key, exit status 2, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loader_fixtures import teacher_path, tiny_hf_weights, tiny_vocab, write_tiny_gguf

from caramba.loaders import load_gguf, save_hf_folder

PRESET = "preset:smollm2_135m_dba_quick"


@pytest.fixture(scope="module")
def bad_teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-teachers")
    weights = tiny_hf_weights(len(tiny_vocab()))
    cut = root / "cut.gguf"
    with teacher_path().open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(2_000_000))
    tiny = write_tiny_gguf(root / "tiny.gguf", weights)
    folder = save_hf_folder(load_gguf(tiny), root / "corrupt-hf")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {"qwen": write_tiny_gguf(root / "qwen.gguf", weights, arch="qwen2"), "cut": cut,
            "corrupt": folder, "tiny": tiny}


@pytest.mark.parametrize(("case", "needles"), [
    ("qwen", ["qwen.gguf: architecture 'qwen2' is not supported"]),
    ("cut", ["cut.gguf: tensor 'token_embd.weight' ends at byte 31,866,688 but the file has "
             "only 2,000,000 bytes: the file is truncated"]),
    ("corrupt", ["corrupt-hf/model.safetensors: not a readable safetensors file",
                 "truncated or corrupt"]),
    ("tiny", ["student tensor 'embedder.weight' (Hugging Face name "
              "'model.embed_tokens.weight') has shape (49152, 576) in the manifest but "
              "(264, 64) in the teacher", "tiny.gguf"]),
])
def test_caramba_run_with_a_bad_teacher_prints_one_error_naming_it(
    bad_teachers, tmp_path, case, needles
):
    result = subprocess.run(
        [sys.executable, "-m", "caramba_cli.main", "run", PRESET,
         f"vars.teacher={bad_teachers[case]}", "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
