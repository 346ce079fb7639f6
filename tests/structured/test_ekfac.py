"""EKFAC's algebra: KFAC in its eigenbasis, corrected eigenvalues, exact-damping inverse, state dicts."""

import io
from dataclasses import replace

import pytest
import torch
from contract import contract_on_cases
from structured_factors import kfac_blocks, kfac_dense, kfac_factors, kfac_params, kfac_reference

from curvkit.structured import EigenCorrectedKroneckerLinearOperator, KroneckerFactoredLinearOperator


def _kfac(dtype=torch.float64):
    return KroneckerFactoredLinearOperator(kfac_params(dtype), kfac_blocks(kfac_factors(dtype)))


def _corrected(dtype=torch.float64, seed=0):
    """The eigenbasis of KFAC with random non-negative eigenvalues, and its dense matrix."""
    basis = _kfac(dtype).eigendecomposed()
    generator = torch.Generator().manual_seed(seed)
    blocks = [
        replace(
            block,
            eigenvalues=torch.rand(block.eigenvalues.shape, generator=generator, dtype=torch.float64).to(
                dtype
            ),
        )
        for block in basis.blocks
    ]
    operator = EigenCorrectedKroneckerLinearOperator(kfac_params(dtype), blocks)
    reference = eigen_dense(operator)
    return operator, reference


def eigen_dense(operator):
    """Dense ``Σ_blocks B diag(Λ) Bᵀ`` from the blocks' eigenvectors and eigenvalues, independently."""
    blocks = []
    for block in operator.blocks:
        rows, columns = block.eigenvalues.shape
        output = torch.eye(columns if block.input_major else rows, dtype=torch.float64)
        output = output if block.output_eigenvectors is None else block.output_eigenvectors.double()
        inputs = None if block.input_eigenvectors is None else block.input_eigenvectors.double()
        inputs = (
            torch.eye(rows if block.input_major else columns, dtype=torch.float64)
            if inputs is None
            else inputs
        )
        left, right = (inputs, output) if block.input_major else (output, inputs)
        basis = torch.kron(left.contiguous(), right.contiguous())
        blocks.append((block.params, basis @ torch.diag(block.eigenvalues.double().flatten()) @ basis.T))
    return kfac_dense(blocks)


CASES = {
    "kfac-eigenvalues-float64": lambda: (_kfac().eigendecomposed(), kfac_reference(kfac_factors())),
    "kfac-eigenvalues-float32": lambda: (
        _kfac(torch.float32).eigendecomposed(),
        kfac_reference(kfac_factors(torch.float32)),
    ),
    "corrected-float64": lambda: _corrected(),
    "corrected-float32": lambda: _corrected(torch.float32),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    return CASES[request.param]()


TestContract = contract_on_cases()


def test_eigendecomposed_kfac_is_kfac():
    kfac = _kfac()
    ekfac = kfac.eigendecomposed()
    assert ekfac.is_psd and ekfac.is_symmetric
    torch.testing.assert_close(ekfac.to_dense(), kfac.to_dense(), rtol=0, atol=1e-12)
    for name in ("trace", "logdet", "frobenius_norm"):
        torch.testing.assert_close(getattr(ekfac, name)(), getattr(kfac, name)(), rtol=1e-12, atol=0)


def test_closed_forms_match_torch_linalg(case):
    operator, reference = case
    tol = {"rtol": 1e-10, "atol": 0} if operator.dtype == torch.float64 else {"rtol": 1e-5, "atol": 0}
    torch.testing.assert_close(operator.trace().double(), reference.trace(), **tol)
    torch.testing.assert_close(operator.logdet().double(), torch.logdet(reference), **tol)
    torch.testing.assert_close(operator.frobenius_norm().double(), torch.linalg.matrix_norm(reference), **tol)


@pytest.mark.parametrize("damping", [0.3, 1e-8])
def test_inverse_with_exact_damping(damping):
    operator, reference = _corrected()
    inverse = operator.inverse(damping)
    damped = reference + damping * torch.eye(reference.shape[0], dtype=torch.float64)
    identity = torch.eye(reference.shape[0], dtype=torch.float64)
    torch.testing.assert_close(inverse.to_dense() @ damped, identity, rtol=0, atol=1e-8 / max(damping, 1e-4))
    torch.testing.assert_close(inverse.logdet(), -torch.logdet(damped), rtol=1e-10, atol=0)
    assert inverse.is_psd and inverse.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"damping": 0.1, "use_exact_damping": False}, ValueError, "only exact damping"),
        (
            {"damping": 0.1, "use_heuristic_damping": True, "use_exact_damping": False},
            ValueError,
            "only exact",
        ),
        ({"damping": (0.1, 0.1)}, ValueError, "one damping value"),
        ({"damping": -0.1}, ValueError, "non-negative"),
    ],
)
def test_inverse_bad_options(kwargs, error, message):
    operator, _ = _corrected()
    with pytest.raises(error, match=message):
        operator.inverse(**kwargs)


def test_inverse_of_a_zero_eigenvalue_without_damping_raises():
    operator, _ = _corrected()
    blocks = list(operator.blocks)
    blocks[2] = replace(blocks[2], eigenvalues=torch.zeros_like(blocks[2].eigenvalues))
    singular = EigenCorrectedKroneckerLinearOperator(kfac_params(), blocks)
    with pytest.raises(torch.linalg.LinAlgError, match=r"blocks\[2\] has a zero eigenvalue"):
        singular.inverse(0.0)


def test_state_dict_round_trip():
    operator, reference = _corrected()
    buffer = io.BytesIO()
    torch.save(operator.state_dict(), buffer)
    buffer.seek(0)
    loaded = EigenCorrectedKroneckerLinearOperator.from_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(loaded.to_dense(), reference, rtol=0, atol=1e-13)
    other, _ = _corrected(seed=1)
    other.load_state_dict(operator.state_dict())
    torch.testing.assert_close(other.to_dense(), reference, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="format"):
        other.load_state_dict(_kfac().state_dict())


def _blocks_with(index, **changes):
    blocks = list(_corrected()[0].blocks)
    blocks[index] = replace(blocks[index], **changes)
    return blocks


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (
            lambda: _blocks_with(1, eigenvalues=-torch.ones(3, 5, dtype=torch.float64)),
            "finite and non-negative",
        ),
        (
            lambda: _blocks_with(1, eigenvalues=torch.ones(15, dtype=torch.float64)),
            r"eigenvalues must be a matrix",
        ),
        (
            lambda: _blocks_with(1, eigenvalues=torch.ones(3, 4, dtype=torch.float64)),
            "input factor of size 5",
        ),
        (
            lambda: _blocks_with(1, output_eigenvectors=torch.eye(4, dtype=torch.float64)),
            r"output_eigenvectors must be None or of shape \[3, 3\]",
        ),
        (
            lambda: _blocks_with(3, input_eigenvectors=torch.eye(3, dtype=torch.float64)),
            r"input_eigenvectors must be None or of shape \[6, 6\]",
        ),
    ],
)
def test_bad_blocks(blocks, message):
    with pytest.raises(ValueError, match=message):
        EigenCorrectedKroneckerLinearOperator(kfac_params(), blocks())
