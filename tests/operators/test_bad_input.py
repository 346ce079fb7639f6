"""Bad input gets a clear exception that names the argument."""

import numpy
import pytest
import torch
from torch import nn
from zoo import CURVATURES, build, make_problem_from_id

from curvkit import (
    EFLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    JacobianLinearOperator,
)
from curvkit.experimental import ActivationHessianLinearOperator


@pytest.fixture
def problem():
    return make_problem_from_id("mlp-ce-mean-three-list")


def test_wrong_vector_length(problem):
    H = HessianLinearOperator(problem.model, problem.loss_func, problem.params, problem.data)
    with pytest.raises(ValueError, match=rf"x must have shape \[{problem.dim}\]"):
        H @ torch.ones(problem.dim + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must be a list of"):
        H @ [torch.ones(3, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"x\[0\] must have shape"):
        H @ [torch.ones(7, dtype=torch.float64) for _ in problem.param_list]


def test_parameter_without_grad(problem):
    frozen = [p.detach() for p in problem.param_list]
    with pytest.raises(ValueError, match=r"params\[0\] does not require grad"):
        GGNLinearOperator(problem.model, problem.loss_func, frozen, problem.data)


def test_parameter_not_of_the_model(problem):
    stranger = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"params\[1\] is not a parameter of model_func"):
        GGNLinearOperator(problem.model, problem.loss_func, [problem.param_list[0], stranger], problem.data)


def test_parameter_not_used_by_the_model():
    class PartlyUsed(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, X):
            return self.used(X)

    model = PartlyUsed().double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))]
    with pytest.raises(ValueError, match=r"params\['unused.weight'\] is not used by model_func"):
        HessianLinearOperator(model, nn.MSELoss(), dict(model.named_parameters()), data)


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_is_named(reentrant):
    """Checkpointed blocks recompute inside the backward pass, which products do not survive;
    the errors say so instead of failing deep inside autograd without a hint."""
    from torch.utils.checkpoint import CheckpointError, checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, X):
            return self.head(torch.tanh(checkpoint(self.block, X, use_reentrant=reentrant)))

    model = Checkpointed().double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))]
    error, match = (ValueError, "checkpoint") if reentrant else (CheckpointError, "checkpoint")
    with pytest.raises(error, match=match):
        GGNLinearOperator(model, nn.MSELoss(), list(model.parameters()), data)


def test_empty_params_and_mixed_dtypes(problem):
    with pytest.raises(ValueError, match="params must contain at least one tensor"):
        HessianLinearOperator(problem.model, problem.loss_func, [], problem.data)
    with pytest.raises(ValueError, match="params must be a list of tensors or a dict"):
        HessianLinearOperator(problem.model, problem.loss_func, problem.param_list[0], problem.data)


def test_empty_data(problem):
    with pytest.raises(ValueError, match="data is empty"):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, [])


@pytest.mark.parametrize(
    "one_shot", [iter, lambda batches: (batch for batch in batches)], ids=["iterator", "generator"]
)
def test_one_shot_data_is_refused(problem, one_shot):
    """A generator would be exhausted after the first pass and every later product would be empty."""
    with pytest.raises(ValueError, match="data must be re-iterable"):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, one_shot(problem.data))


def test_wrong_num_data_is_refused(problem):
    with pytest.raises(ValueError, match="num_data is 1000, but data yielded"):
        GGNLinearOperator(problem.model, problem.loss_func, problem.params, problem.data, num_data=1000)


def test_loss_class_instead_of_instance(problem):
    with pytest.raises(ValueError, match=r"loss_func must be a loss instance such as CrossEntropyLoss\(\)"):
        GGNLinearOperator(problem.model, nn.CrossEntropyLoss, problem.params, problem.data)


def test_same_tensor_twice_in_params(problem):
    weight = problem.param_list[0]
    with pytest.raises(ValueError, match=r"params\[1\] is the same tensor as params\[0\]"):
        GGNLinearOperator(problem.model, problem.loss_func, [weight, weight], problem.data)


def test_model_returning_a_tuple(problem):
    model = problem.model

    def two_outputs(X):
        return model(X), model(X)

    with pytest.raises(ValueError, match="model_func must return a tensor, got tuple"):
        GGNLinearOperator(two_outputs, problem.loss_func, problem.param_list, problem.data)


def test_data_that_is_not_pairs(problem):
    with pytest.raises(ValueError, match=r"data must yield \(X, y\) pairs"):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="data must be an iterable"):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, 5)
    triples = [(X, y, y) for X, y in problem.data]
    with pytest.raises(
        ValueError, match=r"batch 0 is a tuple of length 3\. Combine several inputs into a dict X"
    ):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, triples)


def test_single_samples_instead_of_mini_batches(problem):
    """``list(zip(X, y))`` yields samples; their feature axis would pass for a batch axis."""
    X, y = problem.data[0]
    with pytest.raises(ValueError, match=r"batch 0: X holds 4 samples but y has shape \[\]"):
        EFLinearOperator(problem.model, problem.loss_func, problem.params, list(zip(X, y)))


@pytest.mark.parametrize("loss_func", [nn.L1Loss(), nn.NLLLoss(), nn.HuberLoss()], ids=type)
def test_unsupported_loss_for_mc_fisher(problem, loss_func):
    with pytest.raises(
        NotImplementedError, match="loss_func must be one of MSELoss, CrossEntropyLoss, BCEWithLogitsLoss"
    ):
        FisherMCLinearOperator(problem.model, loss_func, problem.params, problem.data)


def test_dict_input_without_batch_size_fn():
    problem = make_problem_from_id("dict_input-mse-mean-three-list")
    with pytest.raises(ValueError, match="batch_size_fn is required when X is a dict"):
        GGNLinearOperator(problem.model, problem.loss_func, problem.params, problem.data)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mc_samples": 0}, "mc_samples must be a positive integer"),
        ({"mc_samples": 1.5}, "mc_samples must be a positive integer"),
        ({"mc_samples": True}, "mc_samples must be a positive integer"),
        ({"seed": "a"}, "seed must be an integer"),
        ({"num_data": 0}, "num_data must be a positive integer"),
    ],
)
def test_invalid_fisher_arguments(problem, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FisherMCLinearOperator(problem.model, problem.loss_func, problem.params, problem.data, **kwargs)


TARGET_CONSUMERS = {
    **{kind: CURVATURES[kind] for kind in ("hessian", "ggn", "ef", "fisher_mc", "ggn_diagonal")},
    "activation hessian": lambda p, data, **kw: ActivationHessianLinearOperator(
        p.model, p.loss_func, ("1", "input", 0), data[:1], **kw
    ),
}
# how the targets are spoiled, and what the message says was expected
BAD_TARGETS = {
    "float class indices": (
        lambda y: y.float(),
        r"batch 0: y must hold class indices \(torch.int64 or torch.uint8\) of shape .*, or class "
        r"probabilities \(floating point\) of the output's shape.*, for CrossEntropyLoss; got "
        r"torch.float32 of shape \[3\]\. Class indices stored as floats: pass y.long\(\)",
    ),
    "int32 class indices": (lambda y: y.int(), r"batch 0: y must hold class indices .* got torch.int32"),
    "a class axis": (
        lambda y: y.unsqueeze(1),
        r"batch 0: y must hold class indices of shape \[3\] \(the output's shape \[3, 3\] without",
    ),
}


@pytest.mark.parametrize("check_deterministic", [True, False])
@pytest.mark.parametrize("kind", sorted(TARGET_CONSUMERS))
@pytest.mark.parametrize("bad", sorted(BAD_TARGETS))
def test_targets_that_do_not_suit_the_loss_are_refused_up_front(problem, bad, kind, check_deterministic):
    """Float class indices gave ``IndexError: tuple index out of range`` (counting the loss terms)."""
    spoil, match = BAD_TARGETS[bad]
    data = [(X, spoil(y)) for X, y in problem.data]
    with pytest.raises(ValueError, match=match):
        TARGET_CONSUMERS[kind](problem, data, check_deterministic=check_deterministic)


def test_numpy_integers_are_integers(problem):
    fisher = FisherMCLinearOperator(
        problem.model,
        problem.loss_func,
        problem.params,
        problem.data,
        seed=numpy.int64(3),
        mc_samples=numpy.int32(2),
    )
    reference = FisherMCLinearOperator(
        problem.model, problem.loss_func, problem.params, problem.data, seed=3, mc_samples=2
    )
    vector = torch.ones(problem.dim, dtype=torch.float64)
    torch.testing.assert_close(fisher @ vector, reference @ vector)


def test_invalid_common_arguments(problem):
    with pytest.raises(ValueError, match="loss_func is required for EFLinearOperator"):
        EFLinearOperator(problem.model, None, problem.params, problem.data)
    with pytest.raises(ValueError, match="loss_func must reduce with 'mean', 'sum' or 'batchmean'"):
        EFLinearOperator(problem.model, nn.CrossEntropyLoss(reduction="none"), problem.params, problem.data)
    with pytest.raises(ValueError, match=r"shape must be \("):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, problem.data, shape=(3, 3))
    with pytest.raises(ValueError, match="block_sizes must be positive integers summing to"):
        HessianLinearOperator(
            problem.model, problem.loss_func, problem.params, problem.data, block_sizes=[1, 1]
        )
    num_tensors = len(problem.param_list)
    with pytest.raises(ValueError, match="block_sizes must be positive integers summing to"):
        HessianLinearOperator(
            problem.model, problem.loss_func, problem.params, problem.data, block_sizes=[True] * num_tensors
        )
    with pytest.raises(ValueError, match="block_sizes must be a list of integers, got int"):
        HessianLinearOperator(problem.model, problem.loss_func, problem.params, problem.data, block_sizes=4)
    with pytest.raises(ValueError, match="params must be a list of tensors or a dict"):
        HessianLinearOperator(
            problem.model, problem.loss_func, problem.model.parameters(), problem.data, block_sizes=[2]
        )
    numpy_sizes = [numpy.int64(1)] * num_tensors  # NumPy integers are integers
    blocks = HessianLinearOperator(
        problem.model, problem.loss_func, problem.params, problem.data, block_sizes=numpy_sizes
    )
    assert blocks.shape == (problem.dim, problem.dim)
    with pytest.raises(ValueError, match="model_func must be callable"):
        JacobianLinearOperator("model", problem.params, problem.data)
    with pytest.raises(ValueError, match="batch_size_fn must be callable"):
        JacobianLinearOperator(problem.model, problem.params, problem.data, batch_size_fn=3)


@pytest.mark.parametrize("operator", [EFLinearOperator, FisherMCLinearOperator], ids=lambda cls: cls.__name__)
def test_weighted_losses_have_no_fisher(problem, operator):
    weighted = nn.CrossEntropyLoss(weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="weight/pos_weight is not supported"):
        operator(problem.model, weighted, problem.params, problem.data)


@pytest.mark.parametrize("cache_batches", [False, True])
@pytest.mark.parametrize("num_columns", [1, 3])
@pytest.mark.parametrize("kind", ["hessian", "ggn", "ef", "fisher_mc", "jacobian"])
def test_inference_mode_is_refused_instead_of_giving_zeros(problem, kind, num_columns, cache_batches):
    """Forward-mode dual numbers are switched off there: products would silently come out zero."""
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"inference_mode\(\)"):
        build(kind, problem, cache_batches=cache_batches)
    operator = build(kind, problem, cache_batches=cache_batches)
    vectors = torch.ones(operator.shape[1], num_columns, dtype=torch.float64)
    expected = operator @ vectors  # fills the cache, if any
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch.no_grad\(\) is fine"):
        operator @ vectors
    with torch.no_grad():
        torch.testing.assert_close(operator @ vectors, expected)


def _replace_first_weight(model):
    model[0].weight = nn.Parameter(model[0].weight.detach().clone())


def _to_float32(model):
    model.float()


def _freeze_first_weight(model):
    model[0].weight.requires_grad_(False)


MODEL_CHANGES = {
    "parameter replaced": (_replace_first_weight, "was replaced in model_func"),
    "dtype changed": (_to_float32, r"is now torch.float32 on cpu"),
    "frozen": (_freeze_first_weight, "no longer requires grad"),
}


@pytest.mark.parametrize("change", sorted(MODEL_CHANGES))
@pytest.mark.parametrize("cache_batches", [False, True])
@pytest.mark.parametrize("num_columns", [1, 3])
def test_products_refuse_a_model_changed_under_the_operator(change, cache_batches, num_columns):
    """Stale parameters would give the old model's numbers on some derivative paths, errors on others."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    G = GGNLinearOperator(
        problem.model, problem.loss_func, problem.params, problem.data, cache_batches=cache_batches
    )
    vectors = torch.ones(problem.dim, num_columns, dtype=torch.float64)
    G @ vectors
    modify, message = MODEL_CHANGES[change]
    modify(problem.model)
    with pytest.raises(RuntimeError, match=r"params\[0\] " + message):
        G @ vectors


def test_products_refuse_a_model_switched_to_train_mode_after_the_probe():
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    model = nn.Sequential(problem.model, nn.Dropout(0.5)).eval()
    H = HessianLinearOperator(model, problem.loss_func, list(model.parameters()), problem.data)
    model.train()
    with pytest.raises(RuntimeError, match="model_func changed to train mode since the operator was built"):
        H @ torch.ones(H.shape[0], dtype=torch.float64)


def test_counted_num_data_follows_the_data():
    """Only a num_data the user gave is held against the data; a counted one is not frozen."""
    problem = make_problem_from_id("mlp-ce-mean-three-list")
    data = list(problem.data)
    G = GGNLinearOperator(problem.model, problem.loss_func, problem.params, data)
    assert G.num_data == problem.num_data
    data.append(problem.data[0])
    G @ torch.ones(problem.dim, dtype=torch.float64)
