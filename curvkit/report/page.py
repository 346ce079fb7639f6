"""``index.html``: one self-contained page (images embedded, no script, nothing fetched)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from curvkit.report.context import AnalysisResult

PAGE_FILE = "index.html"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.body { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; max-width: 640px; } figure.wide { max-width: 100%; }
img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; margin-top: 0.4em; }
.meta, .functions, .cost { color: #555; font-size: 0.9em; }
.status { padding: 0.5em 0.8em; border-radius: 4px; background: #fff4e5; }
.status.failed { background: #fdecea; }
section.compact { display: inline-block; vertical-align: top; margin-right: 3em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def write_page(path: Path, report: dict[str, Any], results: list[AnalysisResult]) -> Path:
    """Write the page for ``report`` (``metrics.json``'s content), embedding the PNGs beside ``path``.

    Returns:
        ``path``.
    """
    path.write_text(page(report, results, path.parent))
    return path


def page(report: dict[str, Any], results: list[AnalysisResult], folder: Path) -> str:
    """The HTML of the page: a summary table first, then one section per analysis."""
    problem, settings, budget = report["problem"], report["settings"], report["budget"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>curvkit report: {escape(problem['name'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Curvature report: <code>{escape(problem['name'])}</code></h1>",
        f"<p>{escape(problem['description'])}</p>",
        _meta(problem, budget, report["environment"]),
        "<h2>Summary</h2>",
        _summary(results),
    ]
    parts += [_section(result, folder) for result in results]
    parts.append(f'<p class="meta">Settings: <code>{escape(command_line(settings))}</code></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _meta(problem: dict[str, Any], budget: dict[str, Any], environment: dict[str, Any]) -> str:
    used = sum(budget["used"].values())
    return (
        f'<p class="meta">D = {problem["num_parameters"]:,} parameters, N = {problem["num_data"]:,} samples '
        f"in {problem['num_batches']} batches, {escape(problem['dtype'])} on {escape(problem['device'])}; "
        f"{used:,} of {budget['total']:,} budgeted products used; curvkit {escape(environment['curvkit'])}, "
        f"torch {escape(environment['torch'])}, {escape(environment['created'])}.</p>"
    )


def command_line(settings: dict[str, Any]) -> str:
    """The ``curvkit report`` command that repeats the report."""
    words = ["curvkit report", f"--model {settings['model']}", f"--out {settings['out']}"]
    for option in ("device", "dtype", "params"):
        if settings[option] is not None:
            words.append(
                f"--{option} {settings[option]!r}" if option == "params" else f"--{option} {settings[option]}"
            )
    words += [f"--seed {settings['seed']}", f"--top-k {settings['top_k']}", f"--budget {settings['budget']}"]
    words += ["--quick"] * settings["quick"] + ["--no-dense"] * (not settings["dense"])
    return " ".join(words)


def _summary(results: list[AnalysisResult]) -> str:
    """Estimates and, where a dense matrix gave it, the exact value of the same quantity side by side."""
    lines: dict[str, dict[str, Any]] = {}
    order: list[Any] = []
    for result in results:
        if result.status != "ok":
            order.append(result)
        for row in result.findings.summary:
            if row.quantity not in lines:
                lines[row.quantity] = {"key": result.key, "estimate": "", "exact": "", "functions": []}
                order.append(row.quantity)
            line = lines[row.quantity]
            line["exact" if row.exact else "estimate"] = row.value
            line["functions"].append(row.function)
    rows = ["<table><tr><th>quantity</th><th>estimate</th><th>exact (dense)</th><th>computed with</th></tr>"]
    for item in order:
        if isinstance(item, AnalysisResult):
            rows.append(
                f'<tr><td><a href="#{item.key}">{escape(item.title)}</a></td>'
                f'<td colspan="2">{escape(item.status)}: {escape(item.message)}</td><td></td></tr>'
            )
            continue
        line = lines[item]
        functions = "<br>".join(f"<code>{escape(function)}</code>" for function in line["functions"])
        rows.append(
            f'<tr><td><a href="#{line["key"]}">{escape(item)}</a></td><td>{escape(line["estimate"])}</td>'
            f"<td>{escape(line['exact'])}</td><td>{functions}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _section(result: AnalysisResult, folder: Path) -> str:
    findings = result.findings
    compact = ' class="compact"' if result.status == "ok" and not findings.figures else ""
    parts = [f'<section id="{result.key}"{compact}>', f"<h2>{escape(result.title)}</h2>"]
    if result.status != "ok":
        kind = "failed" if result.status == "failed" else "other"
        parts.append(f'<p class="status {kind}"><b>{escape(result.status)}</b>: {escape(result.message)}</p>')
    for note in findings.notes:
        parts.append(f'<p class="status">{escape(note)}</p>')
    parts.append('<div class="body">')
    for figure in findings.figures:
        data = base64.b64encode((folder / figure.file).read_bytes()).decode("ascii")
        wide = ' class="wide"' if figure.wide else ""
        parts.append(
            f'<figure{wide}><img src="data:image/png;base64,{data}" data-file="{escape(figure.file)}" '
            f'alt="{escape(figure.caption)}"><figcaption>{escape(figure.caption)}</figcaption></figure>'
        )
    if findings.table:
        header, *rows = findings.table
        parts.append("<table><tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</div>")
    if findings.functions:
        names = ", ".join(f"<code>{escape(name)}</code>" for name in findings.functions)
        parts.append(f'<p class="functions">Computed with {names}.</p>')
    if result.products:
        cost = f"{result.products:,} products with curvature operators, {result.seconds:.1f} s."
        parts.append(f'<p class="cost">{cost}</p>')
    parts.append("</section>")
    return "\n".join(parts)
