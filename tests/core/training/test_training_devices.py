"""Device and dtype resolution: auto picks what exists; a missing device names the key."""

import pytest
import torch
from caramba.devices import autocast, grad_scaler, resolve_device, resolve_dtype
from caramba.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@no_cuda
def test_auto_falls_back_to_cpu_and_float32() -> None:
    if torch.backends.mps.is_available():
        pytest.skip("MPS present")
    device = resolve_device("auto")
    assert device == torch.device("cpu")
    assert resolve_dtype("auto", device) is torch.float32


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
