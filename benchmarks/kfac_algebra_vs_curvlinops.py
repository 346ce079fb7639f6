"""curvkit's KFAC / EKFAC algebra on curvlinops 3.0.1's own Kronecker factors: do the numbers agree?

Dev-only: run with a Python that has ``curvlinops-for-pytorch==3.0.1`` and curvkit on its path::

    PYTHONPATH=. /tmp/clvenv/bin/python benchmarks/kfac_algebra_vs_curvlinops.py

An MLP (Linear 5→4, Tanh, Linear 4→3), cross-entropy, 2 batches of 8, float64. curvlinops computes
the factors ('type-2' KFAC; 'empirical' EKFAC); curvkit's ``KroneckerFactoredLinearOperator``
takes them as they are, and its ``EigenvalueCorrections`` takes the layers' inputs and output
gradients recorded by hooks. Each row is the largest entry of the difference over the largest
entry of curvlinops' result (dense matrices through ``@ I``; scalars for closed forms).
"""

from __future__ import annotations

import torch
from curvlinops import EFLinearOperator, EKFACLinearOperator, KFACInverseLinearOperator, KFACLinearOperator
from torch import nn

from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator

INVERSES = [
    {"damping": 1e-2},
    {"damping": (1e-2, 3e-2)},
    {"damping": 1e-2, "use_heuristic_damping": True},
    {"damping": 1e-2, "use_exact_damping": True},
]


def ours_from(kfac, params, joined: bool) -> KroneckerFactoredLinearOperator:
    blocks = []
    for name, positions in kfac._mapping.items():
        G, A = kfac._gradient_covariances[name], kfac._input_covariances.get(name)
        if joined:
            blocks.append(KroneckerBlock((positions["weight"], positions["bias"]), G, A))
        else:
            blocks += [KroneckerBlock((positions["weight"],), G, A), KroneckerBlock((positions["bias"],), G)]
    return KroneckerFactoredLinearOperator(params, blocks)


def difference(ours, theirs) -> str:
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    relative = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    if ours.ndim == 0:  # a closed form: both values
        return f"{relative:.1e} (curvkit {ours.item():.6g}, curvlinops {theirs.item():.6g})"
    return f"{relative:.1e}"


def corrections_from_hooks(model, data, kfac_empirical, ours, joined: bool, num_data: int):
    """EKFAC's corrections from per-example layer inputs and output gradients (a sum-reduced loss)."""
    corrections, records, handles = ours.eigenvalue_corrections(), {}, []
    for layer in (m for m in model if isinstance(m, nn.Linear)):
        handles.append(layer.register_forward_hook(lambda m, i, o: records.__setitem__(m, [i[0].detach()])))
        handles.append(layer.register_full_backward_hook(lambda m, gi, go: records[m].append(go[0].detach())))
    for X, y in data:
        model.zero_grad()
        nn.CrossEntropyLoss(reduction="sum")(model(X), y).backward()
        block = 0
        for name in kfac_empirical._mapping:
            a, g = records[model.get_submodule(name)]
            if joined:
                corrections.add(block, g, torch.cat([a, torch.ones(len(a), 1)], dim=1), scale=1 / num_data)
                block += 1
            else:
                corrections.add(block, g, a, scale=1 / num_data)
                corrections.add(block + 1, g, None, scale=1 / num_data)
                block += 2
    for handle in handles:
        handle.remove()
    return corrections.result()


def main() -> None:
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    X, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    data = [(X[:8], y[:8]), (X[8:], y[8:])]
    loss_func, params = nn.CrossEntropyLoss(), list(model.parameters())
    eye = torch.eye(sum(p.numel() for p in params))
    print("| quantity | weight and bias apart | joined as [W b] |\n|---|---|---|")
    rows: dict[str, list[str]] = {}
    for joined in (False, True):
        separate = not joined
        kfac = KFACLinearOperator(
            model, loss_func, params, data, fisher_type="type-2", separate_weight_and_bias=separate
        )
        kfac.compute_kronecker_factors()
        ours = ours_from(kfac, params, joined)
        rows.setdefault("KFAC (type-2), dense", []).append(difference(ours.to_dense(), kfac @ eye))
        for name in ("trace", "frobenius_norm", "logdet", "det"):
            rows.setdefault(name, []).append(difference(getattr(ours, name)(), getattr(kfac, name)))
        for kwargs in INVERSES:
            theirs = KFACInverseLinearOperator(kfac, **kwargs) @ eye
            rows.setdefault(f"inverse {kwargs}", []).append(
                difference(ours.inverse(**kwargs).to_dense(), theirs)
            )
        empirical = KFACLinearOperator(
            model, loss_func, params, data, fisher_type="empirical", separate_weight_and_bias=separate
        )
        empirical.compute_kronecker_factors()
        ekfac = corrections_from_hooks(
            model, data, empirical, ours_from(empirical, params, joined), joined, 16
        )
        theirs = EKFACLinearOperator(
            model, loss_func, params, data, fisher_type="empirical", separate_weight_and_bias=separate
        )
        rows.setdefault("EKFAC (empirical), dense", []).append(difference(ekfac.to_dense(), theirs @ eye))
        ef_trace = (EFLinearOperator(model, loss_func, params, data) @ eye).trace()
        rows.setdefault("EKFAC trace against the empirical Fisher's trace", []).append(
            difference(ekfac.trace(), ef_trace)
        )
        rows.setdefault("EKFAC logdet", []).append(difference(ekfac.logdet(), theirs.logdet))
        inverse = KFACInverseLinearOperator(theirs, damping=1e-2, use_exact_damping=True) @ eye
        rows.setdefault("EKFAC inverse, exact damping 1e-2", []).append(
            difference(ekfac.inverse(1e-2).to_dense(), inverse)
        )
    smallest = torch.linalg.eigvalsh(kfac @ eye)[0].item()
    for name, cells in rows.items():
        print(f"| {name} | {' | '.join(cells)} |")
    print(
        "\nThe type-2 KFAC is singular (the softmax Hessian annihilates 1, so does the last layer's G): "
        f"smallest eigenvalue of its dense matrix {smallest:.1e}."
    )


if __name__ == "__main__":
    main()
