"""Read YAML while remembering where every key and value came from.

PyYAML's composer gives nodes with marks; we build plain Python data from them and a map
from key path to (line, col), so any later error — pydantic's, the registry's, a shape
check's — can point at the exact spot in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from caramba.manifest.diagnostics import Diagnostic, ManifestError, Path


@dataclass
class SourceMap:
    """Positions (1-based line, col) of every value in a loaded document, by key path."""

    file: str
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path) -> tuple[int, int]:
        """Position of `path`, or of its closest ancestor that has one."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(tuple(path[:end]))
            if pos is not None:
                return pos
        return (0, 0)

    def diagnostic(self, path: Path, message: str) -> Diagnostic:
        line, col = self.locate(path)
        return Diagnostic(self.file, line, col, tuple(path), message)

    def copy_subtree(self, src: Path, dst: Path) -> None:
        """Record that the values under `dst` came from `src` (defaults merged into a target)."""
        n = len(src)
        for path, pos in list(self.positions.items()):
            if path[:n] == src:
                self.positions.setdefault(dst + path[n:], pos)


def _construct(node: yaml.Node, path: Path, smap: SourceMap, loader: yaml.SafeLoader) -> Any:
    smap.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ManifestError([smap.diagnostic(path, f"keys must be scalars, got {key!r}")])
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                line = key_node.start_mark.line + 1
                col = key_node.start_mark.column + 1
                raise ManifestError(
                    [Diagnostic(smap.file, line, col, path + (key,),
                                f"duplicate key {key!r} (the first one would be silently ignored)")]
                )
            child = path + (key,)
            out[key] = _construct(value_node, child, smap, loader)
            # Point errors about a key at the key itself, which is where a reader looks.
            smap.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), smap, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml_with_positions(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML `text`; raise ManifestError with the location on any syntax problem."""
    smap = SourceMap(file)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise ManifestError([Diagnostic(file, 1, 1, (), "the manifest is empty")])
        return _construct(node, (), smap, loader), smap
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ManifestError(
            [Diagnostic(file, line, col, (), f"YAML syntax error: {problem}")]
        ) from None
    except yaml.YAMLError as exc:  # e.g. ReaderError: control characters in the file
        raise ManifestError([Diagnostic(file, 0, 0, (), f"YAML error: {exc}")]) from None
    except RecursionError:
        raise ManifestError([Diagnostic(file, 0, 0, (), "YAML nests too deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_manifest_text(path: FsPath) -> str:
    from caramba.errors import InputError

    if not path.exists():
        raise InputError(f"manifest file {path} does not exist.",
                         hint="check the path, or run `caramba presets` to list shipped ones.")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a manifest file.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"manifest file {path} is not UTF-8 text.") from None
