"""The determinism probe catches random models and data and says how to fix them."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvkit import GGNLinearOperator, HessianLinearOperator, JacobianLinearOperator
from curvkit._engine import MiniBatchEngine
from curvkit._engine import check_deterministic as probe_determinism


def _data(num_batches=2, batch_size=4):
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch_size, 3, generator=generator),
            torch.randint(0, 2, (batch_size,), generator=generator),
        )
        for _ in range(num_batches)
    ]


@pytest.mark.parametrize(
    "layer, match",
    [
        (nn.Dropout(0.5), r"'1' \(Dropout with p=0.5 in train mode\)"),
        (nn.BatchNorm1d(4), r"'1' \(BatchNorm1d: uses batch statistics in train mode\)"),
    ],
    ids=["dropout", "batchnorm"],
)
def test_random_or_batch_coupled_layers_in_train_mode(layer, match):
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match=match):
        GGNLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), _data())
    model.eval()  # the fix the message suggests
    GGNLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), _data())


def test_batch_statistics_in_eval_mode_are_refused():
    """BatchNorm without running statistics couples a batch's samples in eval mode too: the
    products would be those of the batch split, not of the full data."""
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)
    ).eval()
    params, loss_func = list(model.parameters()), nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match=r"couples the samples of a batch: '1' \(BatchNorm1d with track"):
        GGNLinearOperator(model, loss_func, params, _data())
    GGNLinearOperator(model, loss_func, params, _data(), check_deterministic=False)  # the way out
    model[1] = nn.BatchNorm1d(4).eval()  # running statistics: per-sample, accepted
    GGNLinearOperator(model, loss_func, list(model.parameters()), _data())


def test_random_callable_is_caught_by_two_passes():
    layer = nn.Linear(3, 2)

    def noisy(X):  # not a module, so only the two-pass comparison can tell
        # continuous noise: dropout's masks on batch 0 agreed between the passes for some seeds
        output = layer(X)
        return output + torch.randn_like(output)

    with pytest.raises(RuntimeError, match="batch 0 differs between two passes"):
        HessianLinearOperator(noisy, nn.CrossEntropyLoss(), list(layer.parameters()), _data())


def test_shuffled_loader_is_caught():
    X = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="differs between two passes"):
        JacobianLinearOperator(model, list(model.parameters()), loader)
    # the probe is a safeguard that can be turned off
    JacobianLinearOperator(model, list(model.parameters()), loader, check_deterministic=False)


def test_deterministic_setups_pass():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.ReLU(), nn.Linear(4, 2))
    loader = DataLoader(TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,))), batch_size=4)
    GGNLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), loader)


def _probe(product, dim=4):
    engine = MiniBatchEngine(_data(), torch.device("cpu"))
    return probe_determinism(
        engine, nn.Identity(), lambda batch: {"X": batch.X}, product, dim, torch.float64, torch.device("cpu")
    )


def test_probe_tells_a_wrong_column_path_from_randomness():
    """One vector alone, then in a block of two: they must agree; a third product decides why not."""
    matrix = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert _probe(lambda X: matrix @ X)
    assert not _probe(lambda X: matrix @ X * (1.0 if X.shape[1] == 1 else 1.01))  # columns' path off
    with pytest.raises(RuntimeError, match="two products with the same vector differ"):
        _probe(lambda X: matrix @ X + torch.randn_like(X))


def test_operators_fall_back_to_single_vectors_where_columns_disagree(monkeypatch):
    """A wrong batching rule under vmap (simulated: the columns' J V off by 1 %) makes the operator
    multiply one column at a time, with a warning, so its products are right."""
    from curvkit._model.differentiation import ModelFunction

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    data = [(X.double(), y) for X, y in _data()]
    params, loss_func = list(model.parameters()), nn.CrossEntropyLoss()
    expected = GGNLinearOperator(model, loss_func, params, data).to_dense()
    columns_jvp = ModelFunction._forward_jvp

    def off_for_columns(self, X, tangents):
        result = columns_jvp(self, X, tangents)
        return result if tangents[0].shape[0] == 1 else 1.01 * result

    monkeypatch.setattr(ModelFunction, "_forward_jvp", off_for_columns)
    with pytest.warns(UserWarning, match="a batching rule of one of its operations is wrong"):
        ggn = GGNLinearOperator(model, loss_func, params, data)
    assert ggn.max_columns == 1
    torch.testing.assert_close(ggn.to_dense(), expected)


class SqrtOfAbs(nn.Module):
    def forward(self, x):
        return x.abs().sqrt()


def test_probe_names_an_infinite_derivative():
    """Finite data, output and loss, but √|h| has an infinite derivative at h = 0: the products
    are NaN, and the data is not to blame."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False), SqrtOfAbs()).double()
    X = torch.randn(4, 3, dtype=torch.float64)
    X[1] = 0.0  # h = W x = 0
    data = [(X, torch.randint(0, 2, (4,)))]
    with pytest.raises(RuntimeError, match="although every batch's inputs, targets, model output and loss"):
        GGNLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
