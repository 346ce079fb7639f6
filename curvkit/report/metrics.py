"""``metrics.json``: every number of the report and the settings that produced it."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

import curvkit
from curvkit.report.budget import SHARES, share_of
from curvkit.report.context import AnalysisResult
from curvkit.report.problem import Problem
from curvkit.report.settings import ReportSettings

METRICS_FILE = "metrics.json"


def metrics(settings: ReportSettings, problem: Problem, results: list[AnalysisResult]) -> dict[str, Any]:
    """The report as JSON values.

    Returns:
        ``settings`` (every option, defaults filled in), ``environment``, ``problem``,
        ``budget`` (total, shares, products used per analysis), ``analyses`` (by key: title,
        status, message, functions, products, seconds, numbers, figures, notes) and ``figures``
        (every PNG, in page order).
    """
    budget = settings.product_budget
    return _json_safe(
        {
            "settings": settings.as_dict(),
            "environment": {
                "curvkit": curvkit.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
            "problem": {
                "name": problem.name,
                "description": problem.description,
                "num_parameters": problem.dim,
                "num_data": problem.num_data,
                "num_batches": problem.num_batches,
                "device": str(problem.device),
                "dtype": str(problem.dtype).removeprefix("torch."),
                "layers": [{"layer": layer, "entries": entries} for layer, entries in problem.layers],
            },
            "budget": {
                "total": budget,
                "shares": {key: share_of(key, budget) for key in SHARES},
                "used": {r.key: r.products for r in results if r.key in SHARES},
                "outside_budget": {r.key: r.products for r in results if r.key not in SHARES and r.products},
            },
            "analyses": {r.key: _analysis(r) for r in results},
            "figures": [dataclasses.asdict(f) for r in results for f in r.findings.figures],
        }
    )


def write_metrics(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as strict JSON (no NaN), indented."""
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")


def _analysis(result: AnalysisResult) -> dict[str, Any]:
    findings = result.findings
    return {
        "title": result.title,
        "status": result.status,
        "message": result.message,
        "functions": findings.functions,
        "products": result.products,
        "seconds": round(result.seconds, 3),
        "numbers": findings.numbers,
        "figures": [dataclasses.asdict(f) for f in findings.figures],
        "notes": findings.notes,
    }


def _json_safe(value: Any) -> Any:
    """Plain JSON values: non-finite floats become ``None``, tuples lists, tensors numbers or lists."""
    if isinstance(value, dict):
        return {str(key): _json_safe(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(entry) for entry in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item"):  # NumPy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
