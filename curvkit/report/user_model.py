"""The user's own problem: ``--model package.module:function`` or ``--model path/to/file.py:function``.

The function takes no arguments and returns ``(model, loss_function, data)``: an ``nn.Module``,
the loss (a ``torch.nn`` loss module, or a callable as the operators accept it) and the data as
the operators accept it, an iterable of mini-batches ``(X, y)`` such as a list or a
``DataLoader`` (``X`` a tensor or a dict of tensors). ``examples/report_user_model.py`` is one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from curvkit.report.settings import ReportInputError

EXPECTED = "(model, loss_function, data)"


def load_user_problem(spec: str) -> tuple[nn.Module, Any, list, str]:
    """Import the function ``spec`` names, call it, and check what it returns.

    Args:
        spec: ``package.module:function`` (importable from the current directory too) or
            ``path/to/file.py:function``.

    Returns:
        ``(model, loss_function, data, description)``, ``data`` read into a list of batches.

    Raises:
        ReportInputError: If the module does not import, has no such function, the function
            raises, or it returns something else than ``(model, loss_function, data)``.
    """
    function = _imported_function(spec)
    try:
        returned = function()
    except Exception as error:
        raise ReportInputError(f"--model {spec!r}: the function raised {_one_line(error)}") from None
    model, loss_function, data = _checked_return(spec, returned)
    description = f"The user's model from `{spec}`: {type(model).__name__}, loss {_name_of(loss_function)}."
    return model, loss_function, data, description


def _imported_function(spec: str) -> Any:
    location, _, name = spec.rpartition(":")
    if not location or not name.isidentifier():
        raise ReportInputError(
            f"--model {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'."
        )
    try:
        module = _module_from_file(location) if location.endswith(".py") else _module_from_path(location)
    except ReportInputError:
        raise
    except Exception as error:  # anything the module raises while it is imported
        raise ReportInputError(
            f"--model {spec!r}: importing {location!r} raised {_one_line(error)}"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ReportInputError(f"--model {spec!r}: {location!r} has no function {name!r}.")
    return function


def _module_from_file(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ReportInputError(f"--model: no file {path!r} (relative to {os.getcwd()}).")
    sys.path.insert(0, str(file.resolve().parent))  # so that it imports its neighbours
    module_spec = importlib.util.spec_from_file_location(f"_curvkit_report_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _module_from_path(dotted: str) -> Any:
    if os.getcwd() not in sys.path:  # `python -m` puts it there, the console script does not
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as error:
        raise ReportInputError(f"--model: cannot import {dotted!r} ({error}).") from None


def _checked_return(spec: str, returned: Any) -> tuple[nn.Module, Any, list]:
    if not isinstance(returned, (tuple, list)) or len(returned) != 3:
        got = (
            f"a {type(returned).__name__} of length {len(returned)}"
            if isinstance(returned, (tuple, list))
            else (f"a {type(returned).__name__}")
        )
        raise ReportInputError(f"--model {spec!r} must return {EXPECTED}, got {got}.")
    model, loss_function, data = returned
    if not isinstance(model, nn.Module):
        raise ReportInputError(
            f"--model {spec!r} must return {EXPECTED} with an nn.Module first, got a {type(model).__name__}."
        )
    if not callable(loss_function):
        raise ReportInputError(
            f"--model {spec!r} must return {EXPECTED} with a callable loss second, "
            f"got a {type(loss_function).__name__}."
        )
    if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise ReportInputError(
            f"--model {spec!r} must return {EXPECTED} with data an iterable of batches (X, y), "
            f"got a {type(data).__name__}."
        )
    batches = list(data)
    if not batches:
        raise ReportInputError(f"--model {spec!r}: data holds no batch.")
    for index, batch in enumerate(batches):
        if not (
            isinstance(batch, (tuple, list))
            and len(batch) == 2
            and _is_input(batch[0])
            and isinstance(batch[1], Tensor)
        ):
            raise ReportInputError(
                f"--model {spec!r}: data's batch {index} must be a pair (X, y) of tensors "
                f"(X may be a dict of tensors), got {_described(batch)}."
            )
    return model, loss_function, [tuple(batch) for batch in batches]


def _is_input(X: Any) -> bool:
    if isinstance(X, Mapping):
        return bool(X) and all(isinstance(value, Tensor) for value in X.values())
    return isinstance(X, Tensor)


def _described(batch: Any) -> str:
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of " + ", ".join(type(entry).__name__ for entry in batch)
    return f"a {type(batch).__name__}"


def _name_of(loss_function: Any) -> str:
    return (
        type(loss_function).__name__
        if isinstance(loss_function, nn.Module)
        else getattr(loss_function, "__name__", type(loss_function).__name__)
    )


def _one_line(error: BaseException) -> str:
    """``Type: message (file:line)``, the innermost frame's place, on one line."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}{where}"
