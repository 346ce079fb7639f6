"""Parameters per layer: which the curvature matrices cover (``--params``), their shapes and sizes."""

from __future__ import annotations

from curvkit.report.context import AnalysisContext, Findings, SummaryRow


def parameter_table(context: AnalysisContext) -> Findings:
    """List every trainable parameter, its layer, shape and size, and whether it is selected.

    The selected ones, in this order, are the rows and columns of every curvature matrix.
    """
    problem = context.problem
    named = dict(problem.model.named_parameters())
    rows = []
    for name in problem.all_param_names:
        param = named[name]
        rows.append(
            {
                "name": name,
                "layer": name.rpartition(".")[0] or "(model)",
                "shape": list(param.shape),
                "entries": param.numel(),
                "selected": name in problem.params,
            }
        )
    total = sum(row["entries"] for row in rows)
    findings = Findings(functions=["model.named_parameters()"])
    findings.numbers = {
        "dim": problem.dim,
        "total": total,
        "layers": [{"layer": layer, "entries": entries} for layer, entries in problem.layers],
        "parameters": rows,
    }
    findings.table = [["parameter", "layer", "shape", "entries", "selected"]] + [
        [
            row["name"],
            row["layer"],
            "×".join(map(str, row["shape"])) or "scalar",
            f"{row['entries']:,}",
            "yes" if row["selected"] else "no",
        ]
        for row in rows
    ]
    findings.summary.append(
        SummaryRow(
            "parameters analysed (D)",
            f"{problem.dim:,} of {total:,} in {len(problem.layers)} layers",
            "--params selects them by name",
        )
    )
    return findings
