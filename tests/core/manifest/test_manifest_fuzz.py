"""Mutated presets always end in a clean error or a valid plan — never a traceback.

Hundreds of seeded mutations of every shipped preset: deleted keys, values swapped for other
types, huge and negative numbers, misspelled types, and corrupted YAML text.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from caramba.compiler.lower import compile_manifest
from caramba.compiler.plan import Plan
from caramba.errors import CarambaError
from caramba.preset_catalog import list_presets

CASES_PER_PRESET = 240
REPLACEMENTS: list[Any] = [None, 0, -1, 10**40, 4097, 100_000, 1e30, -1e-9, "", "x" * 300, True,
                           [], {}, [1, 2], {"a": 1}, "${undefined}", "${", 3.5, "cuda:9"]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _mutate_data(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        if not paths:
            break
        path = rng.choice(paths)
        parent = _parent(doc, path)
        op = rng.random()
        if op < 0.3 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op < 0.4 and isinstance(parent, dict) and isinstance(path[-1], str):
            value = parent.pop(path[-1])
            key = path[-1]
            i = rng.randrange(len(key)) if key else 0
            parent[key[:i] + key[i + 1:] + rng.choice("aeiosx_")] = value  # misspelled key
        elif op < 0.5 and isinstance(parent[path[-1]], str) and path[-1] == "type":
            parent[path[-1]] = parent[path[-1]][::-1]
        else:
            parent[path[-1]] = rng.choice(REPLACEMENTS)
    return doc


def _mutate_text(text: str, rng: random.Random) -> str:
    op = rng.random()
    i = rng.randrange(len(text))
    if op < 0.3:
        return text[:i]  # truncated file
    if op < 0.6:
        junk = rng.choice(["\t", ":", "- ", "{", "]", "&a", "*b", "!!python/object "])
        return text[:i] + junk + text[i:]
    if op < 0.8:
        lines = text.splitlines()
        j = rng.randrange(len(lines))
        lines[j] = " " * rng.randint(1, 5) + lines[j]  # bad indentation
        return "\n".join(lines)
    return text[:i] + "\x00\x01" + text[i:]


def _check(path: Path) -> str:
    try:
        result = compile_manifest(str(path))
    except CarambaError:
        return "error"
    assert isinstance(result[1], Plan)
    return "plan"


@pytest.mark.parametrize("preset", [p.name for p in list_presets()])
def test_mutated_presets_fail_cleanly_or_compile(preset: str, tmp_path: Path) -> None:
    source = next(p for p in list_presets() if p.name == preset).path.read_text()
    doc = yaml.safe_load(source)
    rng = random.Random(f"fuzz-{preset}")
    outcomes = {"error": 0, "plan": 0}
    for case in range(CASES_PER_PRESET):
        path = tmp_path / f"case{case}.yml"
        if case % 3 == 0:
            path.write_text(_mutate_text(source, rng), errors="replace")
        else:
            path.write_text(yaml.safe_dump(_mutate_data(doc, rng), sort_keys=False))
        try:
            outcomes[_check(path)] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case} of {preset} raised {type(exc).__name__}: {exc}\n"
                        f"manifest:\n{path.read_text()[:3000]}")
    # The mutations must actually exercise both outcomes.
    assert outcomes["error"] > CASES_PER_PRESET // 4, outcomes
    assert outcomes["plan"] > 0, outcomes
