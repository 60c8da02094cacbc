"""Backend dispatch: installed backends win per device, the reference fills every gap."""

from __future__ import annotations

import logging

import pytest
import torch
from caramba.errors import RegistryError
from caramba.kernels import dispatch
from caramba.kernels.dispatch import OPS, get_backend, reference
from caramba.registry import Registry


class FakeBackend:
    def __init__(self, name: str, ops=OPS, serves: bool = True) -> None:
        self.name = name
        self.serves = serves
        for op in ops:
            setattr(self, op, lambda *a, _op=op, **k: (self.name, _op))

    def supports(self, device: torch.device) -> bool:
        return self.serves


class BrokenRegistry(Registry):
    """An entry that is installed but whose module cannot be imported."""

    def __contains__(self, name: object) -> bool:
        return name == "cpu"

    def get(self, name: str):
        raise RegistryError("kernel backend 'cpu' from caramba-kernels cannot be loaded: boom")


@pytest.fixture
def kernels(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """An empty `caramba.kernels` registry, so installed packages do not leak into the test."""
    registry = Registry("caramba.kernels.test-empty", "kernel backend")
    monkeypatch.setattr(dispatch, "KERNELS", registry)
    monkeypatch.delenv(dispatch.ENV, raising=False)
    dispatch.reset()
    yield registry
    dispatch.reset()


def test_no_installed_backend_falls_back_to_the_reference(kernels: Registry) -> None:
    assert get_backend("cpu") is reference
    assert get_backend(torch.device("cuda", 0)) is reference


def test_installed_backend_serves_its_device_type(kernels: Registry) -> None:
    cpu, triton = FakeBackend("cpu"), FakeBackend("triton")
    kernels.register("cpu", cpu)
    kernels.register("triton", triton)
    assert get_backend("cpu") is cpu
    assert get_backend("cuda:0") is triton
    assert get_backend("mps") is reference


def test_environment_variable_forces_the_reference(kernels, monkeypatch) -> None:
    kernels.register("cpu", FakeBackend("cpu"))
    monkeypatch.setenv("CARAMBA_KERNELS", "reference")
    assert get_backend("cpu") is reference


def test_environment_variable_forces_a_named_backend(kernels, monkeypatch) -> None:
    triton = FakeBackend("triton")
    kernels.register("triton", triton)
    monkeypatch.setenv("CARAMBA_KERNELS", "triton")
    assert get_backend("cpu") is triton


def test_forcing_an_unknown_backend_is_a_value_error(kernels, monkeypatch) -> None:
    monkeypatch.setenv("CARAMBA_KERNELS", "cuda-magic")
    with pytest.raises(ValueError, match=r"CARAMBA_KERNELS='cuda-magic': no such kernel backend"):
        get_backend("cpu")


def test_forcing_a_backend_that_cannot_serve_the_device_is_a_value_error(
    kernels, monkeypatch
) -> None:
    kernels.register("triton", FakeBackend("triton", serves=False))
    monkeypatch.setenv("CARAMBA_KERNELS", "triton")
    with pytest.raises(ValueError, match=r"cannot serve device cpu"):
        get_backend("cpu")


def test_backend_that_declines_the_device_is_skipped(kernels: Registry) -> None:
    kernels.register("triton", FakeBackend("triton", serves=False))
    assert get_backend("cuda") is reference


def test_missing_ops_are_served_by_the_reference(kernels: Registry) -> None:
    kernels.register("cpu", FakeBackend("cpu", ops=("quantize", "decode_attention")))
    backend = get_backend("cpu")
    assert backend.name == "cpu"
    assert backend.quantize("q8_0", None) == ("cpu", "quantize")
    assert backend.decode_attention() == ("cpu", "decode_attention")
    assert backend.dba_decode_attention is reference.dba_decode_attention
    assert backend.append is reference.append
    x = torch.randn(2, 32)
    back = backend.dequantize("q8_0", reference.quantize("q8_0", x), 32)
    assert back.shape == x.shape and back.dtype == torch.float32


def test_backend_that_fails_to_load_is_skipped_with_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(dispatch, "KERNELS", BrokenRegistry("caramba.kernels", "kernel backend"))
    monkeypatch.delenv(dispatch.ENV, raising=False)
    dispatch.reset()
    with caplog.at_level(logging.WARNING, logger="caramba.kernels"):
        assert get_backend("cpu") is reference
    assert "cannot be loaded: boom" in caplog.text
    dispatch.reset()


def test_choice_is_logged_once_per_device(kernels: Registry, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="caramba.kernels"):
        for _ in range(3):
            get_backend("cpu")
    chosen = [r for r in caplog.records if "reference backend" in r.getMessage()]
    assert len(chosen) == 1
    assert "no installed fast backend for cpu" in chosen[0].getMessage()


def test_bad_device_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"device: not a torch device"):
        get_backend("gpu-please")


def test_reference_backend_exposes_every_op() -> None:
    for op in OPS:
        assert callable(getattr(reference, op))


def test_installed_entry_points_load_if_present() -> None:
    """Whatever the real `caramba.kernels` group holds must load and expose the ops."""
    from caramba.registry import KERNELS

    for name in KERNELS.names():
        backend = KERNELS.get(name)
        for op in ("decode_attention", "dba_decode_attention", "quantize", "dequantize"):
            assert callable(getattr(backend, op, None)), f"{name} lacks {op}"
