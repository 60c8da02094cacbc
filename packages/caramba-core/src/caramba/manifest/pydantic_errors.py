"""Turn pydantic's ValidationError into located, human diagnostics with did-you-mean."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from caramba.errors import did_you_mean
from caramba.manifest.diagnostics import Diagnostic, Path
from caramba.manifest.source import SourceMap


def _unwrap(annotation: Any) -> list[Any]:
    """Candidate types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(root: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the value at `loc` (None if not a model)."""
    current: list[Any] = [root]
    value = raw
    for part in loc:
        nxt: list[Any] = []
        for typ in current:
            for t in _unwrap(typ):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                    field = t.model_fields.get(part)
                    if field is not None:
                        nxt.append(field.annotation)
                elif origin in (list, tuple) and isinstance(part, int):
                    nxt.extend(typing.get_args(t)[:1])
                elif origin is dict and isinstance(part, str):
                    nxt.extend(typing.get_args(t)[1:2])
        indexable = isinstance(value, list) and isinstance(part, int) and part < len(value)
        value = value.get(part) if isinstance(value, dict) else (value[part] if indexable else None)
        current = nxt
        # Discriminated unions: keep the member whose `type` literal matches the data.
        if isinstance(value, dict) and "type" in value:
            matching = [
                t for typ in current for t in _unwrap(typ)
                if isinstance(t, type) and issubclass(t, BaseModel) and "type" in t.model_fields
                and value["type"] in typing.get_args(t.model_fields["type"].annotation)
            ]
            if matching:
                current = matching
    models = [t for typ in current for t in _unwrap(typ)
              if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_error(err: dict[str, Any], model: type[BaseModel] | None) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = list(model.model_fields) if model else []
        hint = did_you_mean(key, allowed)
        text = f"unknown key {key!r}"
        if hint:
            text += f" — did you mean {hint!r}?"
        if allowed:
            text += f" Allowed keys: {', '.join(allowed)}."
        return text
    if kind == "missing":
        field = model.model_fields.get(str(loc[-1])) if model else None
        desc = f" ({field.description})" if field is not None and field.description else ""
        return f"required key {loc[-1]!r} is missing{desc}"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag")
        expected = ctx.get("expected_tags", "")
        options = [t.strip(" '") for t in str(expected).split(",")]
        hint = did_you_mean(str(tag), options)
        return (f"unknown type {tag!r}" + (f" — did you mean {hint!r}?" if hint else "")
                + f" Expected one of: {expected}.")
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind != "value_error" and "input" in err and not isinstance(err["input"], (dict, list)):
        message += f", got {_short(err['input'])}"
    return message


def diagnostics_from(
    exc: ValidationError, root: type[BaseModel], raw: Any, smap: SourceMap, prefix: Path = ()
) -> list[Diagnostic]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Pydantic appends the union member's tag to the location; drop it for the user.
        clean: list[Any] = []
        value = raw
        for part in loc:
            if isinstance(value, dict) and part in value:
                value = value[part]
                clean.append(part)
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
                clean.append(part)
            elif err["type"] in ("extra_forbidden", "missing") and part == loc[-1]:
                clean.append(part)
        names_a_child = err["type"] in ("extra_forbidden", "missing")
        parent = tuple(clean[:-1]) if names_a_child else tuple(clean)
        model = _model_at(root, parent, raw)
        out.append(smap.diagnostic(prefix + tuple(clean), describe_error(err, model)))
    return out
