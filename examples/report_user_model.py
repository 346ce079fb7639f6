"""Your own model in ``curvkit report``: a function that returns ``(model, loss_function, data)``.

Run from this directory::

    curvkit report --model report_user_model.py:regression

or, with this directory importable, ``curvkit report --model report_user_model:regression``.
``data`` is what curvkit's operators take: a list of mini-batches ``(X, y)`` or a ``DataLoader``
(in a fixed order: no shuffling). The report analyses the model as it is returned (call
``model.eval()`` if it has dropout or batch normalization).
"""

import torch
from torch import nn


def regression():
    """A small MLP regressing 3 outputs from 10 features with the mean squared error: 931 parameters."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Sigmoid(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 3))
    X = torch.randn(200, 10, generator=generator)
    y = torch.sin(X[:, :3]) + 0.1 * torch.randn(200, 3, generator=generator)
    data = [(X[start : start + 50], y[start : start + 50]) for start in range(0, 200, 50)]
    return model, nn.MSELoss(), data
