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


# ------------------------------------------------------------------ call_decode


class OldContractBackend:
    """A backend written before return_lse and the token layout: the C++ and Triton
    backends' decode signatures as they were (no return_lse keyword; per-head rows only)."""

    name = "old"

    def __init__(self) -> None:
        self.calls = 0

    def decode_attention(self, q, k, v, lengths, scale, k_format, v_format, *,
                         num_splits=None):
        self.calls += 1
        if k.shape[1] == 1 and q.shape[-1] != k.shape[-1]:
            raise ValueError(f"k: rows hold {k.shape[-1]} values, but the query has head dim "
                             f"{q.shape[-1]}")
        return reference.decode_attention(q, k, v, lengths, scale, k_format, v_format)


class NewContractBackend(OldContractBackend):
    name = "new"

    def decode_attention(self, *args, num_splits=None, return_lse=False):
        self.calls += 1
        return reference.decode_attention(*args, return_lse=return_lse)


def decode_args(token: bool):
    """The same call every time, with keys per head or one row per token."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 16, generator=gen)
    k, v = torch.randn(2, 4, 10, 16, generator=gen), torch.randn(2, 4, 10, 8, generator=gen)
    if token:
        k = k.transpose(1, 2).reshape(2, 1, 10, 64).contiguous()
    return (q, k, v, torch.tensor([10, 4], dtype=torch.int32), 0.25, "f32", "f32")


def test_call_decode_serves_an_old_backend_through_the_reference_logged_once(caplog) -> None:
    dispatch.reset()
    old = OldContractBackend()
    want = reference.decode_attention(*decode_args(False), return_lse=True)
    with caplog.at_level(logging.WARNING, logger="caramba.kernels"):
        for _ in range(3):
            out, lse = dispatch.call_decode(old, "decode_attention", *decode_args(False),
                                            return_lse=True)
            assert torch.equal(out, want[0]) and torch.equal(lse, want[1])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot take decode_attention with return_lse" in warnings[0]
    assert old.calls == 0  # the keyword was refused before the body ran
    # Calls the old contract covers still go to the backend.
    dispatch.call_decode(old, "decode_attention", *decode_args(False))
    assert old.calls == 1
    # The token layout without return_lse: refused (ValueError) once, then the reference.
    for _ in range(2):
        out = dispatch.call_decode(old, "decode_attention", *decode_args(True))
        torch.testing.assert_close(out, want[0])
    assert old.calls == 2
    dispatch.reset()


def test_call_decode_uses_a_backend_that_has_the_contract() -> None:
    dispatch.reset()
    new = NewContractBackend()
    args = decode_args(True)
    out, lse = dispatch.call_decode(new, "decode_attention", *args, return_lse=True)
    want = reference.decode_attention(*args, return_lse=True)
    assert new.calls == 1
    torch.testing.assert_close(out, want[0])
    torch.testing.assert_close(lse, want[1])
    dispatch.call_decode(new, "decode_attention", *args, return_lse=True)
    assert new.calls == 2


def test_call_decode_still_reports_bad_input() -> None:
    dispatch.reset()
    q, k, v, lengths, scale, kf, vf = decode_args(True)
    with pytest.raises(ValueError, match=r"lengths: every length must lie in \[1, 10\]"):
        dispatch.call_decode(OldContractBackend(), "decode_attention", q, k, v,
                             torch.tensor([11, 1], dtype=torch.int32), scale, kf, vf,
                             return_lse=True)
    with pytest.raises(ValueError, match=r"op: expected one of"):
        dispatch.call_decode(reference, "attention", q, k, v, lengths, scale, kf, vf)
    assert not dispatch._refused  # a refusal caused by bad input is not remembered
    dispatch.reset()
