"""Pretrained models as caramba modules: GGUF files, Hugging Face folders, `hf://`, `pkg:`.

Every loader generates the model's node tree (the mapping a manifest would hold, see
`Pretrained.model_config`), builds it from the registered layers and fills in the weights.
"""

from caramba.loaders.convert import save_hf_folder
from caramba.loaders.gguf import load_gguf, permute_qk, unpermute_qk
from caramba.loaders.hf import load_hf_folder, resolve_hf
from caramba.loaders.llama import LlamaArchitecture, model_config, model_definition
from caramba.loaders.load import load_pretrained, package_file
from caramba.loaders.pretrained import Pretrained

__all__ = [
    "LlamaArchitecture",
    "Pretrained",
    "load_gguf",
    "load_hf_folder",
    "load_pretrained",
    "model_config",
    "model_definition",
    "package_file",
    "permute_qk",
    "resolve_hf",
    "save_hf_folder",
    "unpermute_qk",
]
