"""Every signature in the seed API reference exists in curvkit, with its names, order and defaults.

The reference (``docs/api_reference.txt``, a copy of the seed API reference the project was
created from: the public API) documents ``curvlinops.X``
classes, their ``__init__`` and methods, and functions, as lines ``- name(arguments)``. curvkit
may add keyword arguments after them; it may not rename, reorder or re-default them.
"""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

REFERENCE = Path(__file__).parents[1] / "docs" / "api_reference.txt"


def _closing_parenthesis(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise ValueError(f"unbalanced parentheses after position {start}")


def _split_top_level(arguments: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for character in arguments:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(character, 0)
        if character == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += character
    return [part.strip() for part in [*parts, current] if part.strip()]


def documented_signatures() -> list[tuple[str, str | None, list[tuple[str, object]]]]:
    """``(object path, method or None, [(argument, default or inspect.Parameter.empty)])``."""
    text = REFERENCE.read_text()
    entries, owner = [], None
    for match in re.finditer(r"^- (?:class )?(curvlinops[\w.]*|[a-z_]+)\(", text, flags=re.MULTILINE):
        name = match.group(1)
        arguments = text[match.end() : _closing_parenthesis(text, match.end())]
        if name.startswith("curvlinops"):
            owner, method = name.replace("curvlinops", "curvkit"), None
        else:
            method = name
        if arguments.strip() == "*args, **kwargs":
            continue  # the class line of a class whose __init__ is documented below it
        parsed = []
        for argument in _split_top_level(arguments):
            argument_name, _, default = argument.partition("=")
            argument_name = argument_name.split(":")[0].strip()
            value = ast.literal_eval(default.strip()) if default else inspect.Parameter.empty
            parsed.append((argument_name, value))
        entries.append((owner, method, parsed))
    return entries


SIGNATURES = documented_signatures()


def resolve(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_the_reference_was_parsed():
    assert len(SIGNATURES) >= 25


@pytest.mark.parametrize(
    "path, method, expected",
    SIGNATURES,
    ids=[f"{path}.{method or ''}" for path, method, _ in SIGNATURES],
)
def test_documented_signature(path, method, expected):
    target = resolve(path)
    if method is not None:
        target = getattr(target, method)
    parameters = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    names = [p.name for p in parameters]
    assert names[: len(expected)] == [name for name, _ in expected]
    for parameter, (name, default) in zip(parameters, expected):
        assert parameter.kind is not inspect.Parameter.KEYWORD_ONLY, f"{name} must stay positional"
        assert parameter.default == default, f"default of {name}"
    extra_required = [
        p.name
        for p in parameters[len(expected) :]
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert not extra_required
