"""Loss and gradient norm of the analysed data, the point the curvature is measured at."""

from __future__ import annotations

import torch

from curvkit.report.context import AnalysisContext, Findings, SummaryRow
from curvkit.report.launch import all_reduced
from curvkit.report.problem import batch_size


def loss_and_gradient(context: AnalysisContext) -> Findings:
    """The loss on all batches and the norm of its gradient, overall and per layer.

    Batches are weighted as a ``'mean'`` loss weights them, by their share of the samples (by one
    for ``reduction='sum'``), so that both are those of the whole data set. Computed with plain
    ``torch.autograd``, no curvature product.
    """
    problem = context.problem
    params = problem.param_list
    mean = getattr(problem.loss_function, "reduction", "mean") != "sum"
    num_data = problem.num_data
    loss = torch.zeros((), dtype=torch.float64, device=problem.device)
    gradient = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for X, y in problem.data:
        weight = batch_size(X) / num_data if mean else 1.0
        batch_loss = problem.loss_function(problem.model(X), y)
        grads = torch.autograd.grad(batch_loss, params, allow_unused=True)
        loss += weight * batch_loss.detach().double()
        for total, grad in zip(gradient, grads):
            if grad is not None:
                total += weight * grad.double()
    all_reduced([loss, *gradient], problem.process_group)  # shards under torchrun
    norms = {}
    for name, grad in zip(problem.params, gradient):
        layer = name.rpartition(".")[0] or "(model)"
        norms[layer] = norms.get(layer, 0.0) + float(grad.square().sum())
    norm = sum(norms.values()) ** 0.5
    findings = Findings(functions=["torch.autograd.grad"])
    findings.numbers = {
        "loss": float(loss),
        "gradient_norm": norm,
        "gradient_norm_per_layer": {layer: value**0.5 for layer, value in norms.items()},
    }
    findings.table = [["layer", "gradient norm"]] + [
        [layer, f"{value**0.5:.4g}"] for layer, value in norms.items()
    ]
    findings.summary += [
        SummaryRow("loss", f"{float(loss):.6g}", "torch.autograd"),
        SummaryRow("gradient norm ‖∇L‖", f"{norm:.4g}", "torch.autograd"),
    ]
    return findings
