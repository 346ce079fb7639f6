"""KFAC's bad input: each raises a clear exception that names what is wrong."""

import pytest
import torch
from kfac_problems import classification_data, mlp_classifier
from torch import nn

from curvkit import KFACLinearOperator


@pytest.fixture
def problem():
    model = mlp_classifier()
    return model, nn.CrossEntropyLoss(), list(model.parameters()), classification_data((3, 2))


def test_unsupported_layer_names_layer_and_parameter():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    with pytest.raises(NotImplementedError, match=r"'1' \(LayerNorm\): its parameter 'weight'"):
        KFACLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)


def test_grouped_convolution_is_refused():
    model = nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Flatten()).double()
    data = [(torch.randn(3, 2, 5, dtype=torch.float64), torch.randint(0, 12, (3,)))]
    with pytest.raises(NotImplementedError, match="groups=2"):
        KFACLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)


def test_layer_not_used_per_sample_is_refused():
    class BatchMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 2)

        def forward(self, x):
            return self.layer(x) + self.layer.weight.sum()  # the weight is used outside the layer's call

    model = BatchMean().double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,)))]
    kfac = KFACLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
    with pytest.raises(NotImplementedError, match=r"layer 'layer' .* is not used per sample"):
        kfac.trace  # noqa: B018


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "forward-only"])
def test_mc_samples_with_another_fisher_type(problem, fisher_type):
    with pytest.raises(ValueError, match=f"mc_samples must be 1 for fisher_type='{fisher_type}'"):
        KFACLinearOperator(*problem, fisher_type=fisher_type, mc_samples=2)


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("fisher_type", "type-1", "fisher_type must be one of 'type-2', 'mc', 'empirical', 'forward-only'"),
        ("kfac_approx", "expanded", "kfac_approx must be one of 'expand', 'reduce'"),
        ("loss_average", "sequence", "loss_average must be one of None, 'batch', 'batch\\+sequence'"),
        ("mc_samples", 0, "mc_samples"),
        ("shape", (3, 3), "shape must be"),
    ],
)
def test_unknown_choices(problem, argument, value, message):
    with pytest.raises(ValueError, match=message):
        KFACLinearOperator(*problem, **{argument: value})


def test_loss_average_inconsistent_with_the_reduction(problem):
    model, _, params, data = problem
    with pytest.raises(ValueError, match="loss_average=None means the loss is a sum"):
        KFACLinearOperator(model, nn.CrossEntropyLoss(), params, data, loss_average=None)
    with pytest.raises(ValueError, match="loss_average='batch' means the loss is a mean"):
        KFACLinearOperator(model, nn.CrossEntropyLoss(reduction="sum"), params, data, loss_average="batch")


def test_loss_average_batch_on_sequence_targets():
    model = nn.Linear(3, 4).double()
    data = [(torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64))]
    with pytest.raises(ValueError, match=r"5 positions per example.*'batch\+sequence'"):
        KFACLinearOperator(model, nn.MSELoss(), list(model.parameters()), data, loss_average="batch")
    with pytest.raises(ValueError, match="num_per_example_loss_terms is 4, but the model output has 5"):
        KFACLinearOperator(
            model,
            nn.MSELoss(),
            list(model.parameters()),
            data,
            loss_average="batch+sequence",
            num_per_example_loss_terms=4,
        )


@pytest.mark.parametrize("loss_func", [nn.L1Loss(), nn.NLLLoss(), nn.HuberLoss()])
def test_unsupported_loss(problem, loss_func):
    model, _, params, data = problem
    with pytest.raises(
        ValueError, match="loss_func must be one of MSELoss, CrossEntropyLoss, BCEWithLogitsLoss"
    ):
        KFACLinearOperator(model, loss_func, params, data)


def test_weighted_loss_with_sampled_gradients(problem):
    model, _, params, data = problem
    weighted = nn.CrossEntropyLoss(weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="weight"):
        KFACLinearOperator(model, weighted, params, data, fisher_type="mc")


def test_model_that_is_not_a_module(problem):
    model, loss_func, params, data = problem
    with pytest.raises(ValueError, match=r"model_func must be an nn\.Module"):
        KFACLinearOperator(lambda x: model(x), loss_func, params, data)


def test_inverse_of_something_else():
    from curvkit import KFACInverseLinearOperator

    with pytest.raises(TypeError, match="A must be a KFACLinearOperator"):
        KFACInverseLinearOperator(torch.eye(3), damping=1.0)
    with pytest.raises(TypeError, match="A must be a KFACLinearOperator"):
        KFACInverseLinearOperator(A=torch.eye(3), damping=1.0)  # curvlinops' keyword


# -------------------------------------------------------- the first output, checked in the pass
class CountedForward(nn.Module):
    """Counts its forward passes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_building_without_the_probe_runs_no_forward_pass(problem):
    model, loss_func, params, data = problem
    counted = CountedForward(model)
    kfac = KFACLinearOperator(counted, loss_func, params, data, check_deterministic=False)
    assert counted.calls == 0
    kfac.compute_kronecker_factors()
    assert counted.calls == len(data)


def test_nonfinite_output_is_named_by_the_factor_pass(problem):
    model, loss_func, params, data = problem
    with torch.no_grad():
        params[0][0, 0] = float("nan")
    kfac = KFACLinearOperator(model, loss_func, params, data, check_deterministic=False)
    with pytest.raises(ValueError, match="batch 0: the model output and the loss hold NaN or infinity"):
        kfac.compute_kronecker_factors()


def test_targets_that_do_not_suit_the_output_are_named_by_the_factor_pass():
    model = nn.Linear(3, 4).double()  # outputs [N, T, 4]: cross-entropy takes axis 1 (T) as classes
    data = [(torch.randn(2, 5, 3, dtype=torch.float64), torch.randint(0, 4, (2, 5)))]
    kfac = KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        list(model.parameters()),
        data,
        check_deterministic=False,
        loss_average="batch+sequence",
    )
    with pytest.raises(ValueError, match=r"batch 0: y must hold class indices of shape \[2, 4\]"):
        kfac.compute_kronecker_factors()


def test_positions_of_broadcast_targets_are_checked_on_the_output():
    model = nn.Linear(3, 4).double()
    data = [(torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64))]
    kfac = KFACLinearOperator(
        model, nn.MSELoss(), list(model.parameters()), data, check_deterministic=False, loss_average="batch"
    )  # the targets alone show one position per example
    with pytest.raises(ValueError, match=r"5 positions per example.*'batch\+sequence'"):
        kfac.compute_kronecker_factors()
