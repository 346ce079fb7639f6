"""KFAC's and EKFAC's pass over the data: the output factor's columns pulled back in chunks."""

from __future__ import annotations

import pytest
import torch
from fresh_process import measured
from kfac_problems import (
    classification_data,
    conv_problem,
    language_problem,
    mlp_classifier,
    sequence_problem,
)
from torch import nn

from curvkit import EKFACLinearOperator, KFACLinearOperator
from curvkit._memory import measurable
from curvkit.operators import _recorded_pass as recorded_pass
from curvkit.operators._recorded_pass import chunk_width


class _NotAChain(nn.Sequential):
    """The same modules, but not an ``nn.Sequential`` itself: the pass records it with hooks."""


def _problem(name: str):
    if name in ("mlp", "mlp, recorded"):
        model, loss_func, data = mlp_classifier(), nn.CrossEntropyLoss(), classification_data((3, 2))
        return (_NotAChain(*model) if name == "mlp, recorded" else model), loss_func, data
    if name == "conv2d":
        return conv_problem(2)
    if name == "sequence":
        return sequence_problem("ce")
    return language_problem(tied=True)  # the tied table's sides depend on the number of columns


@pytest.mark.parametrize(
    "num_columns, entries_per_column, recorded_entries, expected",
    [(9, 100, 1000, 5), (9, 100, 10_000, 9), (9, 1000, 100, 1), (1, 10, 10, 1), (4, 0, 0, 1)],
)
def test_a_chunk_takes_its_share_of_the_recorded_entries_and_at_least_one_column(
    num_columns, entries_per_column, recorded_entries, expected
):
    assert recorded_pass.COLUMN_SHARE == 0.5
    assert chunk_width(num_columns, entries_per_column, recorded_entries) == expected


@pytest.mark.parametrize("operator", [KFACLinearOperator, EKFACLinearOperator])
@pytest.mark.parametrize("fisher_type, mc_samples", [("type-2", 1), ("mc", 3)])
@pytest.mark.parametrize("problem", ["mlp", "mlp, recorded", "conv2d", "sequence", "language"])
def test_the_sums_do_not_depend_on_the_chunks(problem, fisher_type, mc_samples, operator, monkeypatch):
    """One column at a time or all at once: the same factors and corrections (float64)."""
    model, loss_func, data = _problem(problem)
    kwargs = {"fisher_type": fisher_type, "mc_samples": mc_samples, "seed": 3}
    if problem in ("sequence", "language"):
        kwargs["loss_average"] = "batch+sequence"
    if operator is KFACLinearOperator and problem in ("conv2d", "sequence"):
        kwargs["kfac_approx"] = "reduce"  # expand is the other problems' (and EKFAC's)
    params = [p for p in model.parameters() if p.requires_grad]
    widths = []
    original = recorded_pass.chunk_width
    monkeypatch.setattr(
        recorded_pass, "chunk_width", lambda *args: widths.append(original(*args)) or widths[-1]
    )
    results = {}
    for share in (1e-9, 1e9):
        monkeypatch.setattr(recorded_pass, "COLUMN_SHARE", share)
        widths.clear()
        results[share] = operator(model, loss_func, params, data, **kwargs).to_dense()
        assert widths and all(width == 1 for width in widths) == (share < 1)
    assert max(widths) > 1  # the whole factor at once is more than one column
    torch.testing.assert_close(results[1e-9], results[1e9], rtol=1e-12, atol=1e-14)


def test_many_classes_go_back_in_chunks_within_their_share(monkeypatch):
    """A chain with 40 classes: 39 columns of S, pulled back in chunks that each take at most half
    the entries of the layers' inputs and outputs (with their share of S)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(600, 20), nn.ReLU(), nn.Linear(20, 40)).double()
    X, y = torch.randn(16, 600, dtype=torch.float64), torch.randint(0, 40, (16,))
    pulled_back_per_column = 16 * (20 + 40)
    recorded = pulled_back_per_column + 16 * (600 + 20)  # outputs and inputs of the two layers
    seen = []
    original = recorded_pass.chunk_width
    monkeypatch.setattr(recorded_pass, "chunk_width", lambda *args: seen.append(args) or original(*args))
    params = list(model.parameters())
    KFACLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(X, y)], fisher_type="type-2"
    ).compute_kronecker_factors()
    ((num_columns, per_column, recorded_entries),) = seen
    assert (num_columns, per_column, recorded_entries) == (39, pulled_back_per_column + 16 * 40, recorded)
    width = original(num_columns, per_column, recorded_entries)
    assert width == 3 and width * per_column <= 0.5 * recorded


MEMORY_SCRIPT = """
import json, torch
from torch import nn
from curvkit import KFACLinearOperator
from curvkit._memory import PeakMemory
from curvkit.operators import _recorded_pass
torch.manual_seed(0)
torch.set_num_threads(1)
class NotAChain(nn.Sequential):  # recorded by autograd instead of the chain's own pass
    pass
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 300)).double()
model = model if {chain} else NotAChain(*model)
data = [(torch.randn(128, 8, dtype=torch.float64), torch.randint(0, 300, (128,)))]
params = list(model.parameters())
def gradient():
    model.zero_grad(set_to_none=True)
    nn.CrossEntropyLoss()(model(data[0][0]), data[0][1]).backward()
gradient()
with PeakMemory(torch.device("cpu")) as of_gradient:
    gradient()
peaks = {{"gradient": of_gradient.bytes}}
for name, share in (("chunked", _recorded_pass.COLUMN_SHARE), ("whole", 1e9)):
    _recorded_pass.COLUMN_SHARE = share
    build = lambda: KFACLinearOperator(model, nn.CrossEntropyLoss(), params, data, fisher_type="type-2")
    build().compute_kronecker_factors()
    kfac = build()
    with PeakMemory(torch.device("cpu")) as of_factors:
        kfac.compute_kronecker_factors()
    peaks[name] = of_factors.bytes
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not measurable(torch.device("cpu")), reason="peak memory is measured on Linux only")
@pytest.mark.parametrize("chain", [True, False], ids=["chain", "recorded"])
def test_the_factor_pass_memory_does_not_grow_with_the_number_of_classes(chain):
    """Type-2 KFAC of a 300-class classifier: ``S`` and its columns pulled back would take 77 MB
    at once (299 columns); in chunks the pass stays within a few times a gradient's peak plus
    its factors (300² + 17² float64 entries), in a fresh process whose C allocator returns
    freed memory at once; through the chain's pass and through autograd's."""
    peaks = measured(MEMORY_SCRIPT.format(chain=chain))
    factors = 2 * 300**2 * 8 + 17**2 * 8  # the output side (weight and bias) and the input side
    assert peaks["whole"] > 60 * 2**20, peaks
    assert peaks["chunked"] <= factors + 4 * peaks["gradient"] + 2**20, peaks
