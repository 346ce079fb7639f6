"""Kernel selection for derivatives (``differentiable_kernels``): which backends, for which models."""

import pytest
import torch
from torch import nn

from curvkit._model.kernels import differentiable_kernels


@pytest.mark.parametrize(
    "model, recurrent",
    [
        (nn.Sequential(nn.Linear(2, 2)), False),
        (nn.Sequential(nn.Conv2d(1, 1, 1)), False),
        (nn.Sequential(nn.LSTM(2, 2)), True),
        (nn.GRU(2, 2), True),
        (lambda x: x, False),  # a plain callable: nothing to inspect
    ],
)
def test_recurrent_models_leave_onednn_and_cudnn_off_during_the_call(model, recurrent):
    before = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    with differentiable_kernels(model):
        assert torch.backends.mkldnn.enabled == (before[0] and not recurrent)
        assert torch.backends.cudnn.enabled == (before[1] and not recurrent)
        assert not torch.backends.mha.get_fastpath_enabled()  # for every model
    assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled) == before
    assert torch.backends.mha.get_fastpath_enabled()


def test_backends_are_restored_after_an_error():
    before = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    with pytest.raises(ValueError, match="inside"), differentiable_kernels(nn.LSTM(2, 2)):
        raise ValueError("inside")
    assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled) == before


def test_sparse_embeddings_take_dense_gradients_during_the_call():
    embedding = nn.Embedding(5, 2, sparse=True)
    with differentiable_kernels(nn.Sequential(embedding)):
        assert not embedding.sparse
    assert embedding.sparse


class _SparseBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.head = nn.Embedding(7, 3, sparse=True), nn.Linear(3, 2)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(1))


@pytest.mark.parametrize("kind", ["hessian", "ggn", "ef", "fisher_mc", "jacobian", "ggn_diagonal"])
def test_models_with_sparse_embeddings(kind):
    """Sparse gradients have no batched or forward-mode form: products failed with
    ``reshape is not implemented for sparse tensors`` before the kernel switch."""
    from test_curvature import OPERATORS, REFERENCES, assert_matches

    from curvkit import JacobianLinearOperator, ggn_diagonal, reference

    torch.manual_seed(0)
    model = _SparseBag().double()
    data = [(torch.randint(0, 7, (n, 5)), torch.randint(0, 2, (n,))) for n in (3, 4)]
    params, loss_func = list(model.parameters()), nn.CrossEntropyLoss()
    if kind == "jacobian":
        actual = JacobianLinearOperator(model, params, data).to_dense()
        expected = reference.jacobian_matrix(model, params, data)
    elif kind == "ggn_diagonal":
        actual = ggn_diagonal(model, loss_func, params, data)
        expected = reference.ggn_matrix(model, loss_func, params, data).diagonal()
    else:
        actual = OPERATORS[kind](model, loss_func, params, data).to_dense()
        expected = REFERENCES[kind](model, loss_func, params, data)
    assert_matches(actual, expected, torch.float64)
    assert model.embedding.sparse


class _WrittenOut(nn.Module):
    """The weight normalization of ``layer`` written out: ``weight = v g / ‖v‖`` (row norms)."""

    def __init__(self, bias, g, v):
        super().__init__()
        self.bias, self.g, self.v = (nn.Parameter(t.detach().clone()) for t in (bias, g, v))

    def forward(self, x):
        return nn.functional.linear(x, self.v * (self.g / self.v.norm(dim=1, keepdim=True)), self.bias)


@pytest.mark.parametrize("style", ["parametrizations", "hook"])
def test_weight_normalized_hessians_are_exact(style):
    """torch's fused weight-norm kernel has a wrong second derivative (non-symmetric Hessians);
    products use the composite ``v g / ‖v‖``, whose Hessian equals the written-out model's."""
    from test_curvature import assert_matches

    from curvkit import HessianLinearOperator, reference

    torch.manual_seed(0)
    fused = torch._weight_norm
    if style == "parametrizations":
        layer = nn.utils.parametrizations.weight_norm(nn.Linear(3, 3))
        g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    else:
        with pytest.warns(FutureWarning, match="deprecated"):
            layer = nn.utils.weight_norm(nn.Linear(3, 3))
        g, v = layer.weight_g, layer.weight_v
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(3, 2)).double()
    written_out = nn.Sequential(_WrittenOut(layer.bias, g, v), nn.Tanh(), model[2]).double()
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    loss_func = nn.CrossEntropyLoss()
    hessian = HessianLinearOperator(model, loss_func, list(model.parameters()), data).to_dense()
    expected = reference.hessian_matrix(written_out, loss_func, list(written_out.parameters()), data)
    assert_matches(hessian, expected, torch.float64)
    assert torch._weight_norm is fused  # restored after the products
