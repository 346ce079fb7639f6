"""EKFACLinearOperator: its eigenvalues are the dense second moments in KFAC's eigenbasis."""

import pytest
import torch
from contract import LinearOperatorContract
from kfac_problems import F64, block, classification_data, language_problem, mlp_classifier, sequence_problem
from torch import nn

from curvkit import EKFACLinearOperator, KFACInverseLinearOperator
from curvkit.reference import empirical_fisher_matrix, ggn_matrix

REFERENCES = {"type-2": ggn_matrix, "empirical": empirical_fisher_matrix}


def eigenbasis(spec):
    """The dense ``Q`` of an eigen block, in the order of its parameter's row-major entries."""
    rows, columns = spec.eigenvalues.shape
    output = spec.output_eigenvectors
    inputs = spec.input_eigenvectors
    if inputs is None:
        inputs = torch.eye(rows if spec.input_major else columns, dtype=F64)
    if output is None:
        output = torch.eye(columns if spec.input_major else rows, dtype=F64)
    inputs, output = inputs.contiguous(), output.contiguous()  # torch.kron views its operands
    return torch.kron(inputs, output) if spec.input_major else torch.kron(output, inputs)


def problems():
    model, loss_func = mlp_classifier(), nn.CrossEntropyLoss()
    yield "mlp", model, loss_func, classification_data((3, 5, 2)), "batch"
    for loss in ("ce", "mse"):
        yield f"sequence-{loss}", *sequence_problem(loss), "batch+sequence"
    for tied in (False, True):
        yield f"language-tied={tied}", *language_problem(tied), "batch+sequence"


PROBLEMS = {name: rest for name, *rest in problems()}


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_eigenvalues_are_the_second_moments_in_the_eigenbasis(name, fisher_type):
    """``Λ = diag(Qᵀ B Q)`` for the block ``B`` of the GGN (type-2) or empirical Fisher."""
    model, loss_func, data, loss_average = PROBLEMS[name]
    params = list(model.parameters())
    ekfac = EKFACLinearOperator(
        model, loss_func, params, data, fisher_type=fisher_type, loss_average=loss_average, max_entries=50
    )
    exact, dense = REFERENCES[fisher_type](model, loss_func, params, data), ekfac.to_dense()
    for spec in ekfac.factored.blocks:
        (index,) = spec.params
        Q = eigenbasis(spec)
        expected = torch.diagonal(Q.T @ block(exact, params, index) @ Q)
        torch.testing.assert_close(spec.eigenvalues.flatten(), expected, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(
            block(dense, params, index), Q @ torch.diag(expected) @ Q.T, rtol=1e-9, atol=1e-13
        )
        torch.testing.assert_close(Q.T @ Q, torch.eye(len(Q), dtype=F64), rtol=0, atol=1e-12)


def test_trace_of_empirical_ekfac_is_the_empirical_fishers():
    model, loss_func, data, _ = PROBLEMS["mlp"]
    params = list(model.parameters())
    ekfac = EKFACLinearOperator(model, loss_func, params, data, fisher_type="empirical")
    torch.testing.assert_close(ekfac.trace, empirical_fisher_matrix(model, loss_func, params, data).trace())


def test_inverse_uses_exact_damping_only():
    model, loss_func, data, _ = PROBLEMS["mlp"]
    ekfac = EKFACLinearOperator(model, loss_func, list(model.parameters()), data, fisher_type="type-2")
    inverse = KFACInverseLinearOperator(ekfac, damping=1e-3, use_exact_damping=True)
    damped = ekfac.to_dense() + 1e-3 * torch.eye(ekfac.shape[0], dtype=F64)
    torch.testing.assert_close(
        inverse.to_dense() @ damped, torch.eye(ekfac.shape[0], dtype=F64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(ekfac.logdet, torch.linalg.slogdet(ekfac.to_dense())[1])
    # the method takes exact damping by default; the class, as curvlinops', asks for it
    torch.testing.assert_close(ekfac.inverse(damping=1e-3).to_dense(), inverse.to_dense(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="only exact damping"):
        KFACInverseLinearOperator(ekfac, damping=1e-3)
    with pytest.raises(ValueError, match="only exact damping"):
        ekfac.inverse(damping=1e-3, use_exact_damping=False)


def test_state_dict_round_trip():
    model, loss_func, data, _ = PROBLEMS["mlp"]
    params = list(model.parameters())
    ekfac = EKFACLinearOperator(model, loss_func, params, data, fisher_type="empirical")
    rebuilt = EKFACLinearOperator.from_state_dict(ekfac.state_dict(), model, params, data)
    torch.testing.assert_close(rebuilt.to_dense(), ekfac.to_dense(), rtol=0, atol=0)


def test_forward_only_is_refused():
    model, loss_func, data, _ = PROBLEMS["mlp"]
    with pytest.raises(ValueError, match="forward-only"):
        EKFACLinearOperator(model, loss_func, list(model.parameters()), data, fisher_type="forward-only")


class TestContract(LinearOperatorContract):
    @pytest.fixture
    def operator(self):
        model, loss_func, data, _ = PROBLEMS["mlp"]
        return EKFACLinearOperator(model, loss_func, list(model.parameters()), data, fisher_type="type-2")

    @pytest.fixture
    def dense(self, operator):
        model, loss_func, data, _ = PROBLEMS["mlp"]
        params = list(model.parameters())
        exact = ggn_matrix(model, loss_func, params, data)
        blocks = []
        for spec in operator.factored.blocks:
            Q = eigenbasis(spec)
            blocks.append(
                Q @ torch.diag(torch.diagonal(Q.T @ block(exact, params, spec.params[0]) @ Q)) @ Q.T
            )
        return torch.block_diag(*blocks)
