"""What ``kfac.py`` times in each library, and its worker processes (time, memory, accuracy).

A worker builds one problem of ``benchmarks/problems.py`` and measures one library on it: curvkit
or curvlinops 3.0.1 (the same constructor signature) or BackPACK 1.7.1 (``KFAC`` and ``KFLR``
extensions). See ``kfac.py`` for what is measured and how the tables read.
"""

from __future__ import annotations

import copy
import importlib
import statistics
import time
from functools import partial

import torch
from kronecker import psd
from measure import MemoryProbe, memory_counts
from problems import gradient_function, make_problem
from torch import nn

from curvkit.structured._factors import SHORT_PRODUCT_ROWS

FISHER_TYPES = ("mc", "type-2", "empirical", "forward-only")
BACKPACK = {"mc": "KFAC", "type-2": "KFLR"}
ROUNDS = 5  # timed rounds per worker, after one warm-up round
PRODUCT_CALLS = 10  # products (and floors) per round: one takes milliseconds
COLUMNS = 16


def factor_settings(problem: str) -> dict[str, dict]:
    """Row label → ``KFACLinearOperator`` keyword arguments of the factor rows."""
    settings = {f"factors '{kind}'": {"fisher_type": kind} for kind in FISHER_TYPES}
    if problem == "cnn":  # BackPACK's KFLR is the 'reduce' approximation on convolutions
        settings["factors 'type-2', reduce"] = {"fisher_type": "type-2", "kfac_approx": "reduce"}
    return settings


def kfac_builder(library: str, model, loss_func, params, data, operator: str = "KFACLinearOperator"):
    """A function of keyword arguments that builds curvkit's or curvlinops' (E)KFAC operator."""
    cls = getattr(importlib.import_module(library), operator)
    return lambda **kwargs: cls(model, loss_func, params, data, check_deterministic=False, **kwargs)


def backpack_factors(model, loss_func, data, extension_name: str):
    """BackPACK's KFAC / KFLR factors, summed over the batches (BackPACK gives them per batch)."""
    from backpack import backpack as hooks_on
    from backpack import extensions

    extension, attribute = getattr(extensions, extension_name), extension_name.lower()

    def factors():
        total = None
        for X, y in data:
            with hooks_on(extension()):
                loss_func(model(X), y).backward()
            batch = [factor for param in model.parameters() for factor in getattr(param, attribute)]
            total = batch if total is None else [t + f for t, f in zip(total, batch)]
        return total

    return factors


def layer_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """``(out, in')`` of each weight as KFAC sees it: ``[out, in · kernel]``; every layer has a bias."""
    return [
        (m.weight.shape[0], m.weight[0].numel())
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def floor(shapes: list[tuple[int, int]], vector: torch.Tensor):
    """``G_l W_l A_lᵀ`` and ``G_l b_l`` per layer on ``vector``'s per-parameter views (``[D]`` or ``[D, k]``).

    With ``k`` columns, the rows of ``W``'s ``[out, in, k]`` view are multiplied by ``A`` in one
    batched product after ``G`` (the same multiplications, no copy of the input). ``A`` is
    symmetric: for at most 16 rows ``G W`` is multiplied by ``A`` itself, as curvkit's product
    does (the CPU BLAS packs a transposed ``A`` at a cost so few rows do not repay).
    """
    generator = torch.Generator().manual_seed(0)
    factors = [(psd(out, generator), psd(inp, generator)) for out, inp in shapes]
    sizes = [size for out, inp in shapes for size in (out * inp, out)]
    pieces = vector.split(sizes)

    def run():
        for (G, A), W, b in zip(factors, pieces[::2], pieces[1::2]):
            out, inp = G.shape[0], A.shape[0]
            if vector.ndim == 1:
                (G @ W.view(out, inp)) @ (A if out <= SHORT_PRODUCT_ROWS else A.T)
            else:
                A @ (G @ W.view(out, -1)).view(out, inp, -1)
            G @ b.view(out, -1)

    return run


def factor_floor(model: nn.Module, loss_func: nn.Module, data):
    """The 'empirical' factors' arithmetic in plain torch, as a call: a gradient (hooks keep each
    layer's input and output gradient), then per layer and batch the Gram matrices ``aᵀa`` of the
    inputs (patches for a convolution) and ``gᵀg`` of the output gradients. An upper bound of the
    floor: KFAC needs no weight gradients.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]

    def rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.Conv2d):  # [N, C·k·k, positions] → [N · positions, C·k·k]
            x = nn.functional.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            return x.transpose(1, 2).flatten(end_dim=1)
        return x.flatten(end_dim=-2)

    def run():
        records = {}

        def keep(layer, inputs, output):
            records[layer] = [inputs[0].detach()]
            output.register_hook(lambda g: records[layer].append(g.movedim(1, -1) if g.ndim > 2 else g))

        handles = [layer.register_forward_hook(keep) for layer in layers]
        sums = {}
        for X, y in data:
            loss_func(model(X), y).backward()
            for layer, (a, g) in records.items():
                a, g = rows(layer, a), g.flatten(end_dim=-2)
                grams = (a.T @ a, g.T @ g)
                sums[layer] = grams if layer not in sums else [s + t for s, t in zip(sums[layer], grams)]
        for handle in handles:
            handle.remove()
        return sums

    return run


def eigendecompositions(library: str, build, build_ekfac):
    """The eigendecompositions of freshly computed 'mc' factors (computed untimed), as a call."""
    if library == "curvlinops":  # EKFAC's own step; it pops the factors, hence a fresh operator
        operator = build_ekfac(fisher_type="mc")
        operator.compute_kronecker_factors()
        return operator._compute_eigenvectors
    operator = build(fisher_type="mc")
    operator.compute_kronecker_factors()
    return operator.factored.eigendecomposed  # what EKFAC's first step does with the factors


def correction_pass(library: str, build_ekfac):
    """EKFAC's pass over the data alone, in the eigenbases of freshly computed 'mc' factors (untimed)."""
    operator = build_ekfac(fisher_type="mc")
    if library == "curvlinops":
        operator.compute_kronecker_factors()
        operator._compute_eigenvectors()
        return operator.compute_eigenvalue_correction
    from curvkit import KFACLinearOperator

    eigendecomposed = KFACLinearOperator._computed(operator).eigendecomposed()  # what EKFAC's first step does
    return lambda: operator._corrected(eigendecomposed)


def worker_calls(args, model, loss_func, params, data) -> dict:
    """Name → function that returns the timed call (untimed preparation happens inside)."""
    calls = {}
    if args.library == "backpack":
        from backpack import extend

        model, loss_func = extend(model), extend(loss_func)
        for kind, extension in BACKPACK.items():
            calls[f"factors '{kind}'"] = lambda e=extension: backpack_factors(model, loss_func, data, e)
        return calls
    build = kfac_builder(args.library, model, loss_func, params, data)
    for label, kwargs in factor_settings(args.problem).items():
        calls[label] = lambda kwargs=kwargs: lambda: build(**kwargs).compute_kronecker_factors()
    calls["factor floor"] = lambda: factor_floor(model, loss_func, data)
    operator = build(fisher_type="type-2")
    operator.compute_kronecker_factors()
    generator = torch.Generator().manual_seed(1)
    D = sum(p.numel() for p in params)
    vector, matrix = torch.randn(D, generator=generator), torch.randn(D, COLUMNS, generator=generator)
    shapes = layer_shapes(model)
    for name, x in (("product", vector), (f"product k={COLUMNS}", matrix)):
        bare = floor(shapes, x)
        calls[name] = lambda x=x: lambda: [operator @ x for _ in range(PRODUCT_CALLS)]
        calls[name.replace("product", "product floor")] = lambda bare=bare: (
            lambda: [bare() for _ in range(PRODUCT_CALLS)]
        )
    ekfac = kfac_builder(args.library, model, loss_func, params, data, "EKFACLinearOperator")
    calls["EKFAC eigendecompositions"] = lambda: eigendecompositions(args.library, build, ekfac)
    calls["EKFAC, all"] = lambda: lambda: ekfac(fisher_type="mc").compute_eigenvalue_correction()
    calls["EKFAC correction pass"] = lambda: correction_pass(args.library, ekfac)
    return calls


# ---------------------------------------------------------------------------------- workers
def run_time(args) -> dict:
    clock = time.process_time if args.cpu_time else time.perf_counter
    model, loss_func, params, data = make_problem(args.problem, torch.device("cpu"), args.quick)
    plain = copy.deepcopy(model)  # the baseline without BackPACK's hooks
    calls = {"gradient": lambda: gradient_function(plain, loss_func, list(plain.parameters()), data)}
    calls.update(worker_calls(args, model, loss_func, params, data))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(1 if args.quick else ROUNDS + 1):  # the first round warms up (not --quick)
        for name, prepare in calls.items():
            function = prepare()
            start = clock()
            function()
            elapsed = clock() - start
            if round_index > 0 or args.quick:
                times[name].append(elapsed / (PRODUCT_CALLS if name.startswith("product") else 1))
    return {
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "torch": torch.__version__,
    }


def run_memory(args) -> dict:
    """:func:`measure.memory_counts` of the gradient and of each factor pass (the factors kept)."""
    probe = MemoryProbe(torch.device("cpu"))
    if not probe.available:
        return {"error": "no /proc/self/clear_refs"}
    model, loss_func, params, data = make_problem(args.problem, torch.device("cpu"), False)
    gradient = gradient_function(model, loss_func, params, data)
    gradient()
    build = kfac_builder(args.library, model, loss_func, params, data)

    def factors(kwargs: dict) -> object:
        operator = build(**kwargs)
        operator.compute_kronecker_factors()
        return operator  # the factors (and what else the operator keeps)

    functions = {"gradient": gradient}
    for label, kwargs in factor_settings(args.problem).items():
        factors(kwargs)  # warm-up: one-time allocations are not the pass's
        functions[label] = partial(factors, kwargs)

    def clear_gradients() -> None:
        for param in params:
            param.grad = None

    return {"counts": memory_counts(probe, functions, clear_gradients)}


def run_accuracy(args) -> dict:
    """``KFAC @ V`` per deterministic fisher type (and EKFAC 'empirical') in float64, to a file."""
    torch.set_default_dtype(torch.float64)
    model, loss_func, params, data = make_problem(args.problem, torch.device("cpu"), True)
    model, data = model.double(), [(X.double(), y) for X, y in data]
    V = torch.load(args.vectors)
    build = kfac_builder(args.library, model, loss_func, params, data)
    products = {
        label: build(**kwargs) @ V
        for label, kwargs in factor_settings(args.problem).items()
        if kwargs["fisher_type"] != "mc"
    }
    ekfac = kfac_builder(args.library, model, loss_func, params, data, "EKFACLinearOperator")
    products["EKFAC 'empirical'"] = ekfac(fisher_type="empirical") @ V
    torch.save(products, args.products)
    return {"saved": sorted(products)}
