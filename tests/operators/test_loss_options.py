"""Loss options that change what ``reduction='mean'`` divides by or what the Fisher samples.

``ignore_index`` and class weights make a batch's mean divide by something other than its
number of samples; label smoothing makes the loss no likelihood of sampled targets; soft targets
need not sum to one. Each case is compared with the dense matrix of the *full-data* loss, on data
split into unequal batches (one of them entirely ignored where that applies).
"""

from functools import partial

import pytest
import torch
from torch import nn

from curvkit import (
    EFLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    ggn_diagonal,
    reference,
)

REFERENCES = {
    HessianLinearOperator: reference.hessian_matrix,
    GGNLinearOperator: reference.ggn_matrix,
    EFLinearOperator: reference.empirical_fisher_matrix,
}
NUM_CLASSES = 3


def mlp_problem(targets: torch.Tensor, split=(3, 4, 3)):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, NUM_CLASSES)).double()
    X = torch.randn(targets.shape[0], 4, dtype=torch.float64)
    data = list(zip(X.split(list(split)), targets.split(list(split))))
    return model, list(model.parameters()), data


def class_targets(ignored=()):
    targets = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2, 0, 1])
    targets[list(ignored)] = -100
    return targets


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11 * expected.abs().max().item())


# the second batch (samples 3-6) is entirely ignored; the others partly
IGNORED = (0, 3, 4, 5, 6, 9)


@pytest.mark.parametrize("operator", list(REFERENCES), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "options",
    [{"ignore_index": -100}, {"label_smoothing": 0.2}, {"ignore_index": -100, "label_smoothing": 0.1}],
    ids=["ignore", "smoothing", "both"],
)
def test_cross_entropy_options_give_the_full_data_matrix(operator, reduction, options):
    """Batches enter with weight K_b / K, K_b their number of kept targets (0 for the middle one)."""
    loss_func = nn.CrossEntropyLoss(reduction=reduction, **options)
    model, params, data = mlp_problem(class_targets(IGNORED if "ignore_index" in options else ()))
    expected = REFERENCES[operator](model, loss_func, params, data)
    assert_close(operator(model, loss_func, params, data).to_dense(), expected)


@pytest.mark.parametrize("operator", [HessianLinearOperator, GGNLinearOperator], ids=lambda cls: cls.__name__)
def test_class_weights_give_the_full_data_matrix(operator):
    """A weighted mean divides by the targets' total weight, per batch and over the data."""
    loss_func = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    model, params, data = mlp_problem(class_targets(), split=(2, 6, 2))
    expected = REFERENCES[operator](model, loss_func, params, data)
    assert_close(operator(model, loss_func, params, data).to_dense(), expected)


CLASS_WEIGHTS = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)


def _weighted_case(name):
    """Loss, targets and the split for the weighted losses below."""
    probabilities = torch.softmax(torch.randn(10, NUM_CLASSES, generator=torch.Generator().manual_seed(1)), 1)
    multi_hot = (torch.rand(10, NUM_CLASSES, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    return {
        "ce weight": (nn.CrossEntropyLoss(weight=CLASS_WEIGHTS), class_targets()),
        "ce weight, smoothing, ignored": (
            nn.CrossEntropyLoss(weight=CLASS_WEIGHTS, label_smoothing=0.2),
            class_targets(IGNORED),
        ),
        "ce weight, probabilities, smoothing": (
            nn.CrossEntropyLoss(weight=CLASS_WEIGHTS, label_smoothing=0.1),
            probabilities,
        ),
        "ce weight, sum": (nn.CrossEntropyLoss(weight=CLASS_WEIGHTS, reduction="sum"), class_targets()),
        "bce pos_weight": (nn.BCEWithLogitsLoss(pos_weight=CLASS_WEIGHTS), multi_hot),
        "bce weight and pos_weight": (
            nn.BCEWithLogitsLoss(weight=CLASS_WEIGHTS.flip(0), pos_weight=CLASS_WEIGHTS),
            probabilities,
        ),
    }[name]


WEIGHTED = [
    "ce weight",
    "ce weight, smoothing, ignored",
    "ce weight, probabilities, smoothing",
    "ce weight, sum",
    "bce pos_weight",
    "bce weight and pos_weight",
]


@pytest.mark.parametrize("case", WEIGHTED)
def test_weighted_losses_in_closed_form(case):
    """Class weights, ``pos_weight`` and BCE's ``weight`` scale the loss Hessian per entry (the
    closed forms of :func:`curvkit.losses.output_hessian_matmat`); the GGN and its exact diagonal
    match the dense GGN of the full-data loss as torch computes it."""
    loss_func, targets = _weighted_case(case)
    model, params, data = mlp_problem(targets, split=(2, 6, 2))
    expected = reference.ggn_matrix(model, loss_func, params, data)
    assert_close(GGNLinearOperator(model, loss_func, params, data).to_dense(), expected)
    assert_close(ggn_diagonal(model, loss_func, params, data), expected.diagonal())


def test_weighted_losses_have_no_fisher():
    model, params, data = mlp_problem(class_targets())
    loss_func = nn.CrossEntropyLoss(weight=CLASS_WEIGHTS)
    with pytest.raises(
        NotImplementedError, match="weight/pos_weight is not supported by the MC-Fisher diagonal"
    ):
        ggn_diagonal(model, loss_func, params, data, mode="mc")


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_unnormalized_soft_targets(smoothing):
    """Multi-hot targets: the loss Hessian is (Σ_c q_c)(diag p − p pᵀ), not diag p − p pᵀ."""
    loss_func = nn.CrossEntropyLoss(label_smoothing=smoothing)
    multi_hot = (torch.rand(10, NUM_CLASSES, generator=torch.Generator().manual_seed(1)) < 0.6).double()
    model, params, data = mlp_problem(multi_hot)
    expected = reference.ggn_matrix(model, loss_func, params, data)
    assert_close(GGNLinearOperator(model, loss_func, params, data).to_dense(), expected)
    assert_close(ggn_diagonal(model, loss_func, params, data), expected.diagonal())


@pytest.mark.parametrize(
    "options", [{"ignore_index": -100}, {"label_smoothing": 0.2}], ids=["ignore", "smoothing"]
)
def test_mc_fisher_equals_the_ggn_in_expectation(options):
    """Ignored positions carry no information; smoothing is no likelihood of the samples."""
    loss_func = nn.CrossEntropyLoss(**options)
    model, params, data = mlp_problem(class_targets(IGNORED if "ignore_index" in options else ()))
    ggn = GGNLinearOperator(model, loss_func, params, data).to_dense()
    fisher = FisherMCLinearOperator(model, loss_func, params, data, mc_samples=4000, seed=3)
    assert (fisher.to_dense() - ggn).norm() < 0.05 * ggn.norm()
    assert_close(
        fisher.to_dense(), reference.fisher_mc_matrix(model, loss_func, params, data, mc_samples=4000, seed=3)
    )
    mc_diagonal = ggn_diagonal(model, loss_func, params, data, mode="mc", mc_samples=4000, seed=3)
    assert_close(mc_diagonal, fisher.to_dense().diagonal())


def test_batches_without_loss_terms_are_skipped_and_all_ignored_data_is_refused():
    loss_func = nn.CrossEntropyLoss()
    model, params, data = mlp_problem(class_targets(IGNORED))
    assert torch.isfinite(GGNLinearOperator(model, loss_func, params, data).to_dense()).all()
    model, params, data = mlp_problem(class_targets(range(10)))
    with pytest.raises(ValueError, match="No batch of data has a loss term"):
        GGNLinearOperator(model, loss_func, params, data)


class TemperatureCrossEntropy(nn.CrossEntropyLoss):
    """A subclass that computes something else than its parent."""

    def forward(self, output, target):
        return super().forward(output / 4.0, target)


def test_loss_subclasses_that_override_forward_are_differentiated_not_taken_for_the_parent():
    loss_func = TemperatureCrossEntropy()
    model, params, data = mlp_problem(class_targets())
    expected = reference.ggn_matrix(model, loss_func, params, data)
    assert_close(GGNLinearOperator(model, loss_func, params, data).to_dense(), expected)
    with pytest.raises(NotImplementedError, match="not a subclass that overrides forward"):
        FisherMCLinearOperator(model, loss_func, params, data)


@pytest.mark.parametrize(
    "options",
    [{"ignore_index": -100}, {"weight": torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)}],
    ids=["ignore", "weight"],
)
def test_nll_loss_options_give_the_full_data_matrix(options):
    """``LogSoftmax`` + ``NLLLoss`` averages over kept targets (or their weights), like cross-entropy."""
    loss_func = nn.NLLLoss(**options)
    model, params, data = mlp_problem(class_targets(IGNORED if "ignore_index" in options else ()))
    model.append(nn.LogSoftmax(dim=1))
    expected = reference.hessian_matrix(model, loss_func, params, data)
    assert_close(HessianLinearOperator(model, loss_func, params, data).to_dense(), expected)


def test_ggn_of_nll_loss_warns_that_it_is_zero():
    """NLLLoss is linear in its input (log-probabilities): a zero GGN, which the user is told."""
    model, params, data = mlp_problem(class_targets())
    model.append(nn.LogSoftmax(dim=1))
    with pytest.warns(
        UserWarning, match="NLLLoss, which is linear in the model's output, so the GGN is zero"
    ):
        ggn = GGNLinearOperator(model, nn.NLLLoss(), params, data)
    assert ggn.to_dense().abs().max() == 0.0


def _probabilities(n):
    return torch.softmax(
        torch.randn(n, NUM_CLASSES, generator=torch.Generator().manual_seed(n), dtype=torch.float64), 1
    )


# loss, final layer, targets: torch.nn losses that curvkit has no closed form for
ENTRYWISE = {
    "huber": (
        nn.HuberLoss(delta=0.5),
        nn.Identity(),
        lambda n: torch.randn(n, NUM_CLASSES, dtype=torch.float64),
    ),
    "smooth l1": (
        nn.SmoothL1Loss(beta=0.5),
        nn.Identity(),
        lambda n: torch.randn(n, NUM_CLASSES, dtype=torch.float64),
    ),
    "bce on probabilities": (nn.BCELoss(), nn.Sigmoid(), _probabilities),
    "soft margin": (
        nn.SoftMarginLoss(),
        nn.Identity(),
        lambda n: torch.randint(0, 2, (n, NUM_CLASSES)).double() * 2 - 1,
    ),
    "kl batchmean": (nn.KLDivLoss(reduction="batchmean"), nn.LogSoftmax(dim=1), _probabilities),
    "kl mean": (nn.KLDivLoss(reduction="mean"), nn.LogSoftmax(dim=1), _probabilities),
}


@pytest.mark.parametrize("operator", list(REFERENCES), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("case", sorted(ENTRYWISE))
def test_other_torch_losses(case, operator):
    """Losses without closed forms: autograd's loss Hessian, and a ``'mean'`` that runs over every
    entry (``'batchmean'``: over the batch), so that the EF is scaled like MSE's; each against
    the dense reference of the full-data loss."""
    loss_func, last, targets = ENTRYWISE[case]
    model, params, data = mlp_problem(class_targets(), split=(2, 6, 2))
    model.append(last)
    data = [(X, targets(X.shape[0])) for X, _ in data]
    expected = REFERENCES[operator](model, loss_func, params, data)
    assert_close(operator(model, loss_func, params, data).to_dense(), expected)


def test_partial_functional_loss_with_sum_reduction():
    summed = partial(nn.functional.cross_entropy, reduction="sum")
    model, params, data = mlp_problem(class_targets())
    expected = reference.hessian_matrix(model, nn.CrossEntropyLoss(reduction="sum"), params, data)
    assert_close(HessianLinearOperator(model, summed, params, data).to_dense(), expected)


def test_mse_with_a_broadcasting_target_matches_the_hessian_of_a_linear_model():
    """torch averages over the broadcast shape (and warns); the GGN of a linear model is its Hessian."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    data = [(torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64))]
    params = list(model.parameters())
    with pytest.warns(UserWarning, match="target size"):
        hessian = reference.hessian_matrix(model, nn.MSELoss(), params, data)
        assert_close(GGNLinearOperator(model, nn.MSELoss(), params, data).to_dense(), hessian)


def test_cache_notices_parameter_updates_when_the_first_batch_has_no_loss_term():
    """The cache checks the model once per pass, also when batch 0 is skipped (all targets ignored)."""
    loss_func = nn.CrossEntropyLoss()
    model, params, data = mlp_problem(class_targets((0, 1, 2)))
    cached = HessianLinearOperator(model, loss_func, params, data, cache_batches=True)
    vector = torch.ones(cached.shape[0], dtype=torch.float64)
    cached @ vector
    with torch.no_grad():
        for param in params:
            param.mul_(1.1)
    assert_close(cached @ vector, reference.hessian_matrix(model, loss_func, params, data) @ vector)


SEQUENCE_OPERATORS = {
    "hessian": (HessianLinearOperator, reference.hessian_matrix),
    "ggn": (GGNLinearOperator, reference.ggn_matrix),
    "ef": (EFLinearOperator, reference.empirical_fisher_matrix),
    "ggn_diagonal": (
        lambda *args: ggn_diagonal(*args).diag(),
        lambda *args: reference.ggn_matrix(*args).diagonal().diag(),
    ),
}


@pytest.mark.parametrize("kind", sorted(SEQUENCE_OPERATORS))
def test_sequence_probability_targets_average_over_every_position(kind):
    """Probability targets ``[N, C, T]``: a ``'mean'`` averages over all ``N·T`` positions.

    Counting ``N`` terms instead made the GGN (and its trace) ``T`` times too large. The batches
    have different lengths ``T_b``, so that the batch weights ``K_b / K`` matter too (the Hessian
    is wrong through them alone). Expected: the per-batch ``'sum'`` matrices of the dense
    reference, divided by the ``Σ_b N_b T_b`` positions.
    """
    torch.manual_seed(0)
    model = nn.Conv1d(2, NUM_CLASSES, kernel_size=1).double()  # [N, 2, T] -> logits [N, C, T]
    params, shapes = list(model.parameters()), [(3, 4), (2, 2), (4, 3)]  # (N_b, T_b)
    data = [
        (
            torch.randn(n, 2, t, dtype=torch.float64),
            torch.randn(n, NUM_CLASSES, t, dtype=torch.float64).softmax(1),
        )
        for n, t in shapes
    ]
    operator, dense = SEQUENCE_OPERATORS[kind]
    summed = nn.CrossEntropyLoss(reduction="sum")
    expected = sum(dense(model, summed, params, [batch]) for batch in data) / sum(n * t for n, t in shapes)
    actual = operator(model, nn.CrossEntropyLoss(), params, data)
    assert_close(actual if isinstance(actual, torch.Tensor) else actual.to_dense(), expected)


def test_reference_empirical_fisher_of_nll_loss():
    """The reference counts NLLLoss's averaged terms like cross-entropy's."""
    loss_func = nn.NLLLoss(ignore_index=-100)
    model, params, data = mlp_problem(class_targets(IGNORED))
    model.append(nn.LogSoftmax(dim=1))
    expected = reference.empirical_fisher_matrix(model, loss_func, params, data)
    assert_close(EFLinearOperator(model, loss_func, params, data).to_dense(), expected)
