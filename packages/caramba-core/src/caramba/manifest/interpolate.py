"""`${var}` substitution.

A string that is exactly `${name}` takes the variable's value with its type (so
`d_model: ${d_model}` stays an int); `${name}` inside a longer string is formatted in.
Variables may reference other variables and nested mappings (`${model.width}`); `$${x}`
is a literal `${x}`. Cycles and undefined names are located errors.
"""

from __future__ import annotations

import re
from typing import Any

from caramba.errors import did_you_mean
from caramba.manifest.diagnostics import ManifestError, Path
from caramba.manifest.source import SourceMap

_REF = re.compile(r"\$\$\{|\$\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class _Resolver:
    def __init__(self, variables: dict[str, Any], smap: SourceMap) -> None:
        self.raw = variables
        self.smap = smap
        self.done: dict[str, Any] = {}
        self.active: list[str] = []

    def lookup(self, name: str, at: Path) -> Any:
        if not _NAME.match(name):
            raise ManifestError([self.smap.diagnostic(
                at, f"`${{{name}}}` is not a valid variable reference (use ${{name}} or ${{a.b}})"
            )])
        head, *rest = name.split(".")
        if head not in self.raw:
            hint = did_you_mean(head, self.raw)
            suggestion = f" — did you mean ${{{hint}}}?" if hint else ""
            known = ", ".join(sorted(self.raw)) or "none are defined"
            raise ManifestError([self.smap.diagnostic(
                at, f"undefined variable ${{{name}}}{suggestion} (vars: {known})"
            )])
        value = self.resolve_var(head)
        for i, part in enumerate(rest):
            if not isinstance(value, dict) or part not in value:
                sub = ".".join([head, *rest[: i + 1]])
                raise ManifestError([self.smap.diagnostic(
                    at, f"undefined variable ${{{name}}}: vars has no {sub!r}"
                )])
            value = value[part]
        return value

    def resolve_var(self, name: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name in self.active:
            cycle = " -> ".join([*self.active[self.active.index(name):], name])
            message = f"variables form a cycle: {cycle}"
            raise ManifestError([self.smap.diagnostic(("vars", name), message)])
        self.active.append(name)
        value = self.substitute(self.raw[name], ("vars", name))
        self.active.pop()
        self.done[name] = value
        return value

    def substitute(self, value: Any, path: Path) -> Any:
        if isinstance(value, dict):
            return {k: self.substitute(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, path + (i,)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "$" not in value:
            return value
        whole = _REF.fullmatch(value)
        if whole and whole.group(1) is not None:
            return self.lookup(whole.group(1).strip(), path)

        def repl(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return "${"
            resolved = self.lookup(match.group(1).strip(), path)
            if isinstance(resolved, (dict, list)):
                raise ManifestError([self.smap.diagnostic(
                    path, f"${{{match.group(1)}}} is a {type(resolved).__name__} and cannot be "
                    "formatted inside a longer string"
                )])
            return str(resolved)

        return _REF.sub(repl, value)


def interpolate(data: dict[str, Any], smap: SourceMap) -> dict[str, Any]:
    """Return `data` with every `${...}` replaced; `vars` itself is returned resolved."""
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        raise ManifestError([smap.diagnostic(("vars",), "expected a mapping of name: value")])
    resolver = _Resolver(variables, smap)
    out = {}
    for key, value in data.items():
        if key == "vars":
            out[key] = {name: resolver.resolve_var(name) for name in variables}
        else:
            out[key] = resolver.substitute(value, (key,))
    return out

