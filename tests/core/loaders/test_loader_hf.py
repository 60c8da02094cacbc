"""Hugging Face folders and hf://: the GGUF teacher converted to a real HF Llama folder,
placed in a hub-cache layout, and loaded back with identical logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from intra_op import torch_threads
from loader_fixtures import TEACHER_REF, windows_of
from safetensors import safe_open

from caramba.data.corpora import load_corpus
from caramba.errors import InputError
from caramba.loaders import Pretrained, load_pretrained, save_hf_folder

REPO = "caramba-test/SmolLM2-135M-Instruct"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher() -> Pretrained:
    return load_pretrained(TEACHER_REF)


@pytest.fixture(scope="module")
def folder(teacher, tmp_path_factory) -> Path:
    return save_hf_folder(teacher, tmp_path_factory.mktemp("convert") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def hub_cache(folder, tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding `folder` as REPO at COMMIT, laid out the way
    huggingface_hub writes it: blobs, a snapshot of symlinks, refs/main."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(folder.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        os.link(file, blob)  # no 540 MB copy
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture(scope="module")
def real_text(teacher) -> torch.Tensor:
    doc = load_corpus("kjv").val[3]  # Mark
    return torch.tensor(windows_of(teacher.tokenizer.encode(doc.text), 128, 2))


def test_converted_folder_is_a_hugging_face_llama(folder, teacher):
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"],
            config["rope_theta"], config["rms_norm_eps"]) == (576, 30, 3, 100000.0, 1e-5)
    assert config["tie_word_embeddings"] is True and config["eos_token_id"] == 2
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert len(keys) == 1 + 1 + 30 * 9 and "lm_head.weight" not in keys
    # Stored in the HF (rotate-half) row order: exactly caramba's wq.
    wq = teacher.model.topology.layers[0].layers[0].layers[1].wq.weight
    assert torch.equal(q, wq)


def test_hf_uri_resolves_offline_and_gives_the_gguf_logits(hub_cache, teacher, real_text,
                                                            monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pretrained(f"hf://{REPO}")
    assert loaded.format == "hf" and loaded.source.name == COMMIT
    assert loaded.architecture == teacher.architecture
    assert loaded.model_config == teacher.model_config
    assert loaded.model.topology.layers[2].weight is loaded.model.embedder.weight
    with torch.no_grad():
        assert torch.equal(loaded.model(real_text), teacher.model(real_text))
    text = load_corpus("shakespeare").val[0].text[:5000]
    assert loaded.tokenizer.encode(text) == teacher.tokenizer.encode(text)
    assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id) == (1, 2)
    assert loaded.metadata["chat_template"] == teacher.metadata["chat_template"]


def test_hf_uri_accepts_a_commit_revision(hub_cache, teacher, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    loaded = load_pretrained(f"hf://{REPO}@{COMMIT}", dtype=torch.bfloat16)
    assert loaded.model.embedder.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.model.embedder.weight,
                       teacher.model.embedder.weight.to(torch.bfloat16))


def test_local_folder_and_its_safetensors_file_load_the_same_weights(folder, teacher):
    for ref in (folder, folder / "model.safetensors"):
        loaded = load_pretrained(ref)
        assert loaded.source == folder
        ours, theirs = loaded.model.state_dict(), teacher.model.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_missing_model_names_the_files_and_the_command_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(InputError) as info:
        load_pretrained("hf://meta-llama/Llama-3.2-1B")
    message = str(info.value)
    for needle in ("config.json", "model.safetensors", "tokenizer.json", str(tmp_path),
                   "hf download meta-llama/Llama-3.2-1B", "huggingface-cli download",
                   "HF_HUB_CACHE", "HF_HOME"):
        assert needle in message, needle


def test_missing_revision_is_named_in_the_error(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    with pytest.raises(InputError, match=r"revision v9.*--revision v9"):
        load_pretrained(f"hf://{REPO}@v9")


def test_hf_home_is_honoured_when_hf_hub_cache_is_unset(hub_cache, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "hub").symlink_to(hub_cache)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    from caramba.loaders.hf import resolve_hf

    assert resolve_hf(f"hf://{REPO}").name == COMMIT


@pytest.mark.parametrize("ref", ["hf://just-a-name", "hf://a/b/c", "hf://org/model@"])
def test_malformed_hf_references_are_input_errors(ref):
    with pytest.raises(InputError, match="hf://org/model"):
        load_pretrained(ref)
