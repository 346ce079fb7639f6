"""Memory budgets: wide products measure a probe block and stay within the budget."""

from __future__ import annotations

import pytest
import torch
from fresh_process import measured as run_measured

from curvkit import GGNLinearOperator
from curvkit._memory import measurable

BUDGET = 8 * 2**20
COLUMNS = 64
SCRIPT = f"""
import json, torch
from torch import nn
from curvkit import HessianLinearOperator
from curvkit._memory import PeakMemory
torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3)).double()
data = [(torch.randn(1000, 4, dtype=torch.float64), torch.randint(0, 3, (1000,)))]
H = HessianLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
V = torch.randn(H.shape[1], {COLUMNS}, dtype=torch.float64)
expected = H @ V
with PeakMemory(torch.device("cpu")) as free:
    H @ V
H.memory_budget = {BUDGET}
with PeakMemory(torch.device("cpu")) as budgeted:
    result = H @ V
with PeakMemory(torch.device("cpu")) as again:
    H @ V
print(json.dumps({{"free": free.bytes, "budgeted": budgeted.bytes, "again": again.bytes,
    "width": H.columns_per_product, "error": float((result - expected).abs().max())}}))
"""


@pytest.mark.skipif(not measurable(torch.device("cpu")), reason="peak memory is measured on Linux only")
def test_a_budgeted_product_stays_within_the_budget():
    """In a fresh process whose C allocator returns freed memory at once (so the resident set's
    peak is the computation's), a 64-column Hessian product that takes several budgets whole
    keeps to the budget in blocks, and gives the same result."""
    measured = run_measured(SCRIPT)
    assert measured["free"] > 2 * BUDGET, measured  # without the budget, the product takes more
    assert measured["budgeted"] <= BUDGET, measured
    assert measured["again"] <= BUDGET, measured  # later products reuse the measured width
    assert 1 <= measured["width"] < COLUMNS
    assert measured["error"] < 1e-12


@pytest.mark.parametrize("budget", [0, -5, 1.5, "1 GB"])
def test_a_budget_must_be_a_positive_number_of_bytes(budget):
    model = torch.nn.Linear(2, 2)
    data = [(torch.randn(3, 2), torch.randn(3, 2))]
    operator = GGNLinearOperator(model, torch.nn.MSELoss(), list(model.parameters()), data)
    with pytest.raises(ValueError, match="memory_budget"):
        operator.memory_budget = budget
