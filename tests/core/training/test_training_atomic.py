"""Atomic writes: a crash mid-write leaves the old content and no stray files."""

import json
import os
from pathlib import Path

import pytest

from caramba import atomic
from caramba.atomic import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_file,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)


def test_writes_and_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failure_mid_write_keeps_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def crash(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new content that never lands")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_named_file_writer_lands_whole_and_its_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "w.safetensors"
    names: list[str] = []

    def write(name: str) -> None:
        names.append(name)
        Path(name).write_bytes(b"weights %d" % len(names))

    atomic_write_file(target, write)
    atomic_write_file(target, write)
    assert target.read_bytes() == b"weights 2"
    assert len(set(names)) == 2 and all(Path(n).parent == target.parent for n in names)

    def half_then_crash(name: str) -> None:
        Path(name).write_bytes(b"half")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError, match="mid-save"):
        atomic_write_file(target, half_then_crash)
    assert target.read_bytes() == b"weights 2"
    assert [p.name for p in target.parent.iterdir()] == ["w.safetensors"]


def test_unserialisable_json_never_touches_disk(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"ok": [1, 2.5]})
    assert json.loads(target.read_text()) == {"ok": [1, 2.5]}


def test_directory_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as scratch:
            (scratch / "model.bin").write_bytes(b"half")
            assert scratch.name == f"ckpt.tmp-{os.getpid()}"
            raise RuntimeError("killed mid-save")
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(target) as scratch:
        (scratch / "model.bin").write_bytes(b"whole")
    assert (target / "model.bin").read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_directory_replaces_existing_and_failure_keeps_it(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_directory(target) as scratch:
        (scratch / "v").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as scratch:
            (scratch / "v").write_text("2")
            raise KeyboardInterrupt
    assert (target / "v").read_text() == "1"
    with atomic_directory(target) as scratch:
        (scratch / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_stale_temporaries_of_a_killed_process_are_swept(tmp_path: Path) -> None:
    (tmp_path / "step_00000010.tmp-4242").mkdir()
    (tmp_path / "step_00000010.tmp-4242" / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".latest.json.abc123.tmp").write_text("{")
    (tmp_path / "step_00000005").mkdir()
    (tmp_path / "latest.json").write_text("{}")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step_00000005"]
