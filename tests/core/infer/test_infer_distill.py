"""Speculative decoding on the real SmolLM2-135M teacher: it accepts itself as a draft (the
generator's positions and caches are right on a pretrained model), and a draft distilled
from its greedy labels is trained once, cached, and keeps greedy decoding exact."""

import numpy as np
import pytest
import torch

from caramba.infer import GenerateConfig, Generator, SpeculativeGenerator, distill
from caramba.infer.distill import DraftConfig, corpus_data, distilled_draft, load_teacher
from caramba.infer.speculative import SpeculativeConfig

SMALL = DraftConfig(label_tokens=1024, label_block=128, keep_tokens=256, d_model=32,
                    n_layers=1, n_heads=1, n_kv_heads=1, d_ff=64, steps=20, batch_size=4,
                    block_size=64)


@pytest.fixture(scope="module")
def teacher():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = load_teacher(DraftConfig(teacher_dtype="float32"))
    yield model, tokenizer
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompt():
    val = corpus_data(SMALL).val.data
    return np.asarray(val[1000:1032]).astype(np.int64).tolist()


def greedy(n=16):
    return GenerateConfig(temperature=0.0, max_new_tokens=n, cache_kind="fp32")


def test_the_teacher_accepts_itself_as_its_draft(teacher, prompt):
    model, _ = teacher
    spec = SpeculativeGenerator(model, model, greedy(), SpeculativeConfig(spec_k=4))
    assert torch.equal(spec.generate(prompt), Generator(model, greedy()).generate(prompt))
    assert spec.last_stats.acceptance_rate == 1.0 and spec.last_stats.rounds <= 5


def test_a_distilled_draft_is_trained_once_cached_and_keeps_greedy_exact(teacher, prompt,
                                                                         tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "cache_dir", lambda: tmp_path)
    model, _ = teacher
    draft = distilled_draft(SMALL, teacher=model)
    folder = tmp_path / "drafts" / SMALL.key()
    labels = np.load(tmp_path / "drafts" / f"labels-{SMALL.labels_key()}" / "labels.npy")
    assert len(labels) == 1024
    window = torch.as_tensor(np.asarray(corpus_data(SMALL).train.data[:128]).astype(np.int64))
    with torch.no_grad():
        assert np.array_equal(labels[:128], model(window[None])[0].argmax(-1).numpy())
    assert int(draft.keep[0]) == int(np.bincount(labels).argmax())
    assert draft.keep.numel() == 256 and (folder / "draft.safetensors").is_file()

    def no_teacher(*_args, **_kwargs):
        raise AssertionError("a cached draft must not load the teacher")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    again = distilled_draft(SMALL)
    with torch.no_grad():
        assert torch.equal(again(window[None]), draft(window[None]))

    spec = SpeculativeGenerator(model, draft, greedy(), SpeculativeConfig(spec_k=3))
    assert torch.equal(spec.generate(prompt), Generator(model, greedy()).generate(prompt))
    assert spec.last_stats.rounds > 0


def test_an_exit_draft_shares_the_teachers_bottom_and_keeps_greedy_exact(teacher, prompt,
                                                                        tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "cache_dir", lambda: tmp_path)
    model, _ = teacher
    cfg = DraftConfig(label_tokens=1024, label_block=128, keep_tokens=256, exit_layer=2,
                      adapter_layers=1, steps=10, batch_size=4, block_size=64, lr=1e-4)
    draft = distilled_draft(cfg, teacher=model)
    folder = tmp_path / "drafts" / f"labels-{cfg.labels_key()}"
    features = np.load(folder / "features-exit2.npy")
    assert features.shape == (1024, 576) and features.dtype == np.float16
    # The bottom is the teacher's own first two blocks (no copy); the top was trained.
    bottom = draft.inner.topology.layers[0].layers
    teacher_layers = model.topology.layers[0].layers
    assert len(bottom) == 4 and all(a is b for a, b in zip(bottom, teacher_layers[:4], strict=True))
    top = draft.inner.topology.layers[1]
    assert top.head.weight.shape == (256, 576)
    assert any(not torch.equal(a.float(), b.float()) for a, b in
               zip(top.adapter.parameters(), teacher_layers[4].parameters(), strict=True))
    again = distilled_draft(cfg, teacher=model)  # from the cache
    window = torch.tensor([prompt])
    with torch.no_grad():
        assert torch.equal(again(window), draft(window))
    spec = SpeculativeGenerator(model, draft, greedy(), SpeculativeConfig(spec_k=3))
    assert torch.equal(spec.generate(prompt), Generator(model, greedy()).generate(prompt))
    assert spec.last_stats.rounds > 0
