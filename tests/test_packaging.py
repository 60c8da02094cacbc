"""Each package builds a wheel on its own, with honest dependencies and its entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _wheel(package: str, out: Path) -> zipfile.ZipFile:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO / "packages" / package)],
                   check=True, capture_output=True, text=True)
    wheel = next(out.glob(f"{package.replace('-', '_')}-*.whl"))
    return zipfile.ZipFile(wheel)


def _metadata(wheel: zipfile.ZipFile) -> tuple[dict, str]:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(wheel.read(name).decode())
    points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    return meta, wheel.read(points).decode()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheels")
    return {p: _wheel(p, out) for p in ("caramba-core", "caramba-cli", "caramba-agents")}


def test_core_wheel_ships_presets_and_registers_its_components(wheels: dict) -> None:
    core = wheels["caramba-core"]
    assert "caramba/presets/standard_transformer.yml" in core.namelist()
    meta, points = _metadata(core)
    assert meta["Version"] == "0.1.0"
    requires = meta.get_all("Requires-Dist")
    assert any(r.replace(" ", "").startswith("torch>=2.3") for r in requires)
    for group in ("caramba.layers", "caramba.topologies", "caramba.trainers", "caramba.datasets"):
        assert f"[{group}]" in points


def test_cli_wheel_provides_the_caramba_command(wheels: dict) -> None:
    meta, points = _metadata(wheels["caramba-cli"])
    assert "caramba = caramba_cli.main:main" in points
    assert any(r.startswith("caramba-core") for r in meta.get_all("Requires-Dist"))


def test_agents_wheel_needs_no_torch(wheels: dict) -> None:
    meta, points = _metadata(wheels["caramba-agents"])
    requires = meta.get_all("Requires-Dist") or []
    assert not any(r.startswith(("torch", "caramba-core")) for r in requires), requires
    assert "[caramba.commands]" in points


def test_agents_import_without_torch() -> None:
    code = ("import sys; import caramba_agents.process, caramba_agents.cli; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
