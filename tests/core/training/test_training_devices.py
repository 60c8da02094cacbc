"""Device and dtype resolution: auto picks what exists; a missing device names the key."""

import pytest
import torch

import caramba.devices
from caramba.devices import (
    autocast,
    cpu_has_native_bf16,
    grad_scaler,
    resolve_device,
    resolve_dtype,
)
from caramba.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@no_cuda
@pytest.mark.parametrize(("native_bf16", "expected"), [(False, torch.float32),
                                                       (True, torch.bfloat16)])
def test_auto_falls_back_to_cpu_and_its_fastest_dtype(
        monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype) -> None:
    if torch.backends.mps.is_available():
        pytest.skip("MPS present")
    monkeypatch.setattr(caramba.devices, "cpu_has_native_bf16", lambda: native_bf16)
    device = resolve_device("auto")
    assert device == torch.device("cpu")
    assert resolve_dtype("auto", device) is expected


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse2 avx2 fma", False),
    ("fpu avx512f avx512bw avx512_vnni", False),  # AVX-512 without bf16 dot products
    ("fpu avx512f avx512_bf16", True),
    ("fpu amx_tile amx_bf16", True),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is expected


def test_native_bf16_is_false_where_cpuinfo_is_missing(tmp_path) -> None:
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


@no_cuda
@pytest.mark.parametrize("requested", ["cuda", "cuda:1"])
def test_unavailable_cuda_names_key_and_fix(requested: str) -> None:
    with pytest.raises(InputError, match="train.device") as info:
        resolve_device(requested)
    assert "train.device: auto" in str(info.value)
    assert info.value.exit_code == 2


def test_unavailable_mps_names_key() -> None:
    if torch.backends.mps.is_available():
        pytest.skip("MPS present")
    with pytest.raises(InputError, match="train.device is 'mps'"):
        resolve_device("mps")


def test_float16_on_cpu_is_refused_with_the_key() -> None:
    with pytest.raises(InputError, match="train.dtype"):
        resolve_dtype("float16", torch.device("cpu"))


def test_cpu_bfloat16_autocast_runs_matmuls_in_bfloat16() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    a = torch.randn(4, 4)
    with autocast(cpu, torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
    with autocast(cpu, torch.float32):
        assert (a @ a).dtype is torch.float32
    assert grad_scaler(cpu, torch.bfloat16) is None
