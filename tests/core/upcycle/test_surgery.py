"""Attention surgery on the real SmolLM2 teacher and real English text."""

from __future__ import annotations

import pytest
import torch
from smollm import build, model_config, smollm, student, truncated_teacher, windows

from caramba.errors import CheckpointError
from caramba.upcycle.activations import SecondMoments, capture_attention
from caramba.upcycle.surgery import upcycle_weights

LAYERS = 3  # the first blocks of the real teacher keep these tests fast


def _relative_errors(teacher, model) -> list[float]:
    """Per layer: mean |student - teacher| / mean |teacher| of the attention output, each
    layer fed the teacher's own input (what blockwise distillation starts from)."""
    x = windows(4, 96)
    with torch.no_grad(), capture_attention(teacher) as captured:
        teacher(x)
    layers = dict(model.named_modules())
    errors = []
    for name, [(inp, out)] in captured.items():
        with torch.no_grad():
            mine = layers[name](inp)
        errors.append(float((mine - out).abs().mean() / out.abs().mean()))
    return errors


def _moments(teacher) -> dict[str, torch.Tensor]:
    moments = SecondMoments()
    with torch.no_grad(), capture_attention(teacher, outputs=False) as captured:
        teacher(windows(4, 128, split="train"))
    for name, [(inp, _)] in captured.items():
        moments.add(name, inp)
    return moments.result()


def test_full_geometric_path_reproduces_the_teachers_logits() -> None:
    teacher = smollm().model
    model = student(sem_dim=9, geo_dim=576, attn_dim=576, rope_base=100000.0)
    report = upcycle_weights(teacher, model)
    x = windows(2, 48)
    with torch.no_grad():
        expected, got = teacher(x), model(x)
    assert (expected - got).abs().max() < 1e-3 * expected.abs().max()
    assert report.layers[0].geo_pairs == list(range(32))
    assert report.layers[0].geo_frequency_error == 0.0
    assert report.layers[0].geo_energy == pytest.approx(1.0)


def test_surgery_is_far_closer_to_the_teacher_than_random_init() -> None:
    teacher = truncated_teacher(LAYERS)
    moments = _moments(teacher)
    random_init = student(LAYERS)
    upcycle_weights(teacher, random_init)  # copies everything else ...
    fresh = student(LAYERS, seed=1)  # ... so reset the attention layers to random
    for (_, layer), (_, other) in zip(random_init.named_modules(), fresh.named_modules(),
                                         strict=True):
        if getattr(layer, "mode", None) == "dba":
            layer.load_state_dict(other.state_dict())
    whitened, plain = student(LAYERS), student(LAYERS)
    upcycle_weights(teacher, whitened, covariances=moments)
    upcycle_weights(teacher, plain)
    random_err = _relative_errors(teacher, random_init)
    whitened_err = _relative_errors(teacher, whitened)
    assert min(random_err) > 0.95  # a random layer's output is unrelated to the teacher's
    assert sum(whitened_err) / LAYERS < 0.7 and max(whitened_err) < 0.9
    # Weighting the SVD by real inputs is what makes the low-rank projections useful.
    assert sum(whitened_err) < sum(_relative_errors(teacher, plain))


def test_error_shrinks_as_the_ranks_grow() -> None:
    teacher = truncated_teacher(LAYERS)
    moments = _moments(teacher)
    errors = []
    for sem, geo, val in ((4, 8, 12), (8, 16, 24), (16, 32, 48), (32, 64, 64)):
        base = 100000.0 ** (4 * geo / 64) if geo < 64 else 100000.0
        model = student(LAYERS, sem_dim=9 * sem, geo_dim=9 * geo, attn_dim=9 * val,
                        rope_base=base)
        upcycle_weights(teacher, model, covariances=moments)
        errors.append(sum(_relative_errors(teacher, model)) / LAYERS)
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-4 < errors[0]  # all pairs geometric and full values: exact


def test_geometric_pairs_follow_the_students_rope_ladder() -> None:
    teacher = truncated_teacher(1)
    matched = student(1)  # rope_base = 100000^(4*8/64): the teacher's pairs 0, 4, 8, 12
    report = upcycle_weights(teacher, matched).layers[0]
    assert report.geo_pairs == [0, 4, 8, 12] and report.geo_frequency_error < 1e-12
    off = upcycle_weights(teacher, student(1, rope_base=10000.0)).layers[0]
    assert off.geo_frequency_error > 0.1  # nearest pairs, reported as approximate
    assert sum(report.pair_energy) == pytest.approx(1.0)


def test_shape_mismatches_name_the_tensor() -> None:
    teacher = truncated_teacher(2)
    narrow = student(2)
    with pytest.raises(CheckpointError, match="w1.weight.*mlp.gate_proj"):
        wrong_ffn = model_config(2, mode="dba", sem_dim=36, geo_dim=72)
        wrong_ffn["topology"]["layers"][0]["layers"][1]["layers"][1]["d_ff"] = 1024
        upcycle_weights(teacher, build(wrong_ffn))
    with pytest.raises(CheckpointError, match="model.layers.1.* no place"):
        upcycle_weights(teacher, student(1))
    with pytest.raises(CheckpointError, match="n_heads 6 vs the teacher's 9"):
        upcycle_weights(teacher, student(2, n_heads=6, n_kv_heads=3, sem_dim=24, geo_dim=48,
                                         attn_dim=72))
    upcycle_weights(teacher, narrow)  # the matching student goes through


def test_geometric_pairs_match_the_scaled_frequencies_of_a_llama3_teacher() -> None:
    """Llama 3.x divides the slow pairs' frequencies: surgery matches what really rotates."""
    from types import SimpleNamespace

    from caramba.layers.rotary import RopeScaling, RotaryCache
    from caramba.upcycle.surgery import _geo_pairs

    scaling = RopeScaling(type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192)
    base = 500000.0
    teacher = SimpleNamespace(rotary=RotaryCache(64, base, scaling))
    ladder = base ** (8 * 8 / 64)  # stride 8: the teacher's pairs 0, 8, 16, 24 unscaled
    pairs, error = _geo_pairs(teacher, SimpleNamespace(rotary=RotaryCache(8, ladder, scaling)))
    assert pairs == [0, 8, 16, 24] and error < 1e-9
    # Unscaled, the student's slow pairs rotate up to 32x faster than the teacher's pairs
    # 16 and 24 do: they take the teacher pairs whose scaled frequencies are nearest.
    pairs, error = _geo_pairs(teacher, SimpleNamespace(rotary=RotaryCache(8, ladder)))
    assert pairs[:2] == [0, 8] and pairs[2:] != [16, 24] and error > 0.1
