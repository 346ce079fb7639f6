"""seigh on symmetric matrices with prescribed spectra, against dense ground truth and known bounds."""

import pytest
import torch
from spectra import (
    PSD,
    TorchOnly,
    hmt_bound,
    nystrom_nuclear_bound,
    oversampled_bound,
    relative_error,
    symmetric_matrix,
    tail,
)

import curvkit.sketch._operator as operator_module
import curvkit.sketch._symmetric as symmetric
from curvkit import DiagonalLinearOperator
from curvkit.linear_operator import DenseLinearOperator
from curvkit.sketch import seigh
from curvkit.sketch._operator import block_width

RECOVERIES = ["hmt", "nystrom", "singlepass", "oversampled_60"]
NOISES = ["rademacher", "gaussian", "ssrft"]


def operator(A, psd=False):
    return DenseLinearOperator(A, symmetric=True, psd=psd)


@pytest.mark.parametrize("spectrum", ["low_rank", "psd_low_rank"])
@pytest.mark.parametrize("recovery", RECOVERIES)
@pytest.mark.parametrize("noise", NOISES)
def test_exactly_low_rank_to_float_precision(spectrum, recovery, noise):
    A, values = symmetric_matrix(spectrum)
    ews, evs = seigh(
        operator(A, spectrum in PSD),
        "cpu",
        torch.float64,
        20,
        seed=3,
        noise_type=noise,
        recovery_type=recovery,
    )
    assert relative_error(ews, evs, A) < 1e-12
    expected = values[values.abs().argsort(descending=True)][:12]
    torch.testing.assert_close(ews[:12], expected, atol=1e-12, rtol=0)
    assert float(ews[12:].abs().max()) < 1e-12
    torch.testing.assert_close(evs.T @ evs, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("recovery", RECOVERIES)
def test_exactly_low_rank_in_float32(recovery):
    A, _ = symmetric_matrix("low_rank")
    ews, evs = seigh(A.float(), "cpu", torch.float32, 20, seed=0, recovery_type=recovery)
    assert ews.dtype == evs.dtype == torch.float32
    assert relative_error(ews, evs, A) < 2e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("recovery", RECOVERIES)
def test_half_precision_is_sketched_in_float32(recovery, dtype):
    """Products in half precision, QR and eigh in float32 (no half-precision kernels for them):
    the float32 sketch of the rounded matrix, up to the products' rounding."""
    A, _ = symmetric_matrix("low_rank")
    rounded = A.to(dtype)
    ews, evs = seigh(rounded, "cpu", dtype, 20, seed=0, recovery_type=recovery)
    assert ews.dtype == evs.dtype == torch.float32
    expected, _ = seigh(rounded.float(), "cpu", torch.float32, 20, seed=0, recovery_type=recovery)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ews, expected, rtol=0, atol=8 * eps * float(expected.abs().max()))
    assert relative_error(ews, evs, rounded.double()) < 8 * eps


def mean_error(A, k, recovery, psd=False, seeds=range(6), norm="fro", **options):
    errors = []
    for seed in seeds:
        ews, evs = seigh(
            operator(A, psd),
            "cpu",
            torch.float64,
            k,
            seed=seed,
            noise_type="gaussian",
            recovery_type=recovery,
            **options,
        )
        residual = A - (evs * ews) @ evs.T
        errors.append(float(torch.linalg.matrix_norm(residual, "nuc" if norm == "nuc" else "fro")))
    return sum(errors) / len(errors)


@pytest.mark.parametrize("spectrum", ["fast_decay", "slow_decay", "indefinite"])
@pytest.mark.parametrize("k", [10, 20, 40])
def test_hmt_within_halko_bound(spectrum, k):
    """Mean over six seeds within Halko et al.'s bound on the expectation (Gaussian test matrix)."""
    A, values = symmetric_matrix(spectrum)
    error = mean_error(A, k, "hmt")
    assert error <= hmt_bound(values, k)
    assert error >= tail(values, k) * (1 - 1e-9)  # nothing beats the truncated eigendecomposition


@pytest.mark.parametrize("spectrum", ["fast_decay", "slow_decay"])
@pytest.mark.parametrize("k", [10, 20, 40])
def test_psd_nystrom_within_tropp_bound(spectrum, k):
    A, values = symmetric_matrix(spectrum)
    assert mean_error(A, k, "nystrom", psd=True, norm="nuc") <= nystrom_nuclear_bound(values, k)


@pytest.mark.parametrize("spectrum", ["fast_decay", "slow_decay", "indefinite"])
@pytest.mark.parametrize("k", [10, 20])
def test_oversampled_within_tropp_bound(spectrum, k):
    A, values = symmetric_matrix(spectrum)
    inner = 3 * k
    assert mean_error(A, k, f"oversampled_{inner}") <= oversampled_bound(values, k, inner)


@pytest.mark.parametrize("recovery", ["nystrom", "singlepass"])
@pytest.mark.parametrize("spectrum", ["fast_decay", "indefinite"])
def test_one_pass_recoveries_stay_near_hmt(recovery, spectrum):
    """No bound is known for k × k cores (QᵀΩ is square); on decaying spectra, within 20× HMT's bound."""
    A, values = symmetric_matrix(spectrum)
    assert mean_error(A, 20, recovery) <= 20 * hmt_bound(values, 20)


def test_power_iterations_improve_a_slow_spectrum():
    A, values = symmetric_matrix("slow_decay")
    errors = [mean_error(A, 20, "hmt", seeds=range(3), power_iters=q) for q in (0, 1, 2)]
    assert errors[0] > errors[1] > errors[2] >= tail(values, 20)
    assert errors[2] < 1.1 * tail(values, 20)


def test_psd_nystrom_lies_between_zero_and_the_operator():
    """PSD Nyström satisfies 0 ≼ Â ≼ A, so 0 ≤ λ_i(Â) ≤ λ_i(A) (up to the removed shift)."""
    A, values = symmetric_matrix("fast_decay")
    ews, _ = seigh(operator(A, psd=True), "cpu", torch.float64, 15, seed=1, recovery_type="nystrom")
    assert float(ews.min()) >= 0
    assert bool((ews <= values[:15] + 1e-12).all())
    torch.testing.assert_close(ews[:3], values[:3], rtol=1e-2, atol=0)


def test_indefinite_nystrom_stays_bounded():
    """±pairs of eigenvalues make Ωᵀ A Ω nearly singular for some Ω: over 100 seeds, the truncated
    core stays within a few times the size of A (the plain pseudo-inverse reached 16 ‖A‖_F here)."""
    n = 200
    values = torch.repeat_interleave(0.7 ** torch.arange(n // 2, dtype=torch.float64), 2) * (
        -1.0
    ) ** torch.arange(n)
    U = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).Q
    A = (U * values) @ U.T
    errors = [
        relative_error(
            *seigh(A, "cpu", torch.float64, 20, seed=s, noise_type="gaussian", recovery_type="nystrom"), A
        )
        for s in range(100)
    ]
    assert max(errors) < 3.0


def test_psd_nystrom_removes_its_shift_in_float32():
    """The shift ν ≈ √n ε ‖A‖ is subtracted again: the null space comes back at rounding level, not at ν."""
    A, _ = symmetric_matrix("psd_low_rank")
    ews, _ = seigh(operator(A.float(), psd=True), "cpu", torch.float32, 20, seed=0, recovery_type="nystrom")
    assert float(ews[12:].abs().max()) < 1e-6 * float(ews[0])


@pytest.mark.parametrize("recovery", RECOVERIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_and_exactly_sparse_operators(recovery, dtype):
    """A zero operator (a zero sketch) and one with exact zero rows stay finite and exact."""
    for diagonal in (torch.zeros(300), torch.cat([torch.tensor([2.0, -1.0]), torch.zeros(298)])):
        A = torch.diag(diagonal).to(dtype)
        ews, evs = seigh(A, "cpu", dtype, 10, recovery_type=recovery)
        assert bool(torch.isfinite(ews).all()) and bool(torch.isfinite(evs).all())
        torch.testing.assert_close(ews[:2], diagonal[:2].to(dtype), atol=1e-5, rtol=0)
        torch.testing.assert_close(evs.T @ evs, torch.eye(10, dtype=dtype), atol=1e-5, rtol=0)


@pytest.mark.parametrize("recovery", RECOVERIES)
@pytest.mark.parametrize("noise", NOISES)
def test_same_result_for_every_block_size(recovery, noise):
    A, _ = symmetric_matrix("slow_decay")
    results = [
        seigh(
            operator(A),
            "cpu",
            torch.float64,
            20,
            seed=5,
            noise_type=noise,
            recovery_type=recovery,
            meas_blocksize=width,
        )
        for width in (1, 3, 7, None)
    ]
    for ews, evs in results[1:]:
        torch.testing.assert_close(ews, results[0][0], atol=1e-12, rtol=0)
        torch.testing.assert_close(
            (evs * ews) @ evs.T, (results[0][1] * results[0][0]) @ results[0][1].T, atol=1e-12, rtol=0
        )


def test_max_columns_of_the_operator_bounds_the_blocks():
    A, _ = symmetric_matrix("fast_decay")
    foreign = TorchOnly(A)
    op = DenseLinearOperator(A, symmetric=True)
    op.max_columns = 4
    seen = []
    original = op._matmat
    op._matmat = lambda X: seen.append(X.shape[1]) or original(X)
    seigh(op, "cpu", torch.float64, 10, meas_blocksize=16)
    assert max(seen) == 4
    seigh(foreign, "cpu", torch.float64, 10, meas_blocksize=3)


@pytest.mark.parametrize(
    ("meas_blocksize", "max_columns", "widest"), [(2, None, 2), (None, 3, 3), (None, None, 5)]
)
def test_the_hmt_core_holds_no_more_columns_than_the_caller_allows(
    monkeypatch, meas_blocksize, max_columns, widest
):
    """A bound on the columns (``meas_blocksize``, ``max_columns``) bounds the core's blocks of
    ``A Q`` too; without one they are ``k / 8`` wide however narrow the products (here 1 column)."""
    monkeypatch.setattr(operator_module, "DEFAULT_BLOCK_ENTRIES", 1)
    seen = []
    original = symmetric.applied_rows
    monkeypatch.setattr(
        symmetric,
        "applied_rows",
        lambda A, rows, width: seen.append(rows.shape[0]) or original(A, rows, width),
    )
    A, _ = symmetric_matrix("fast_decay")
    op = operator(A)
    op.max_columns = max_columns
    ews = seigh(op, "cpu", torch.float64, 40, seed=0, meas_blocksize=meas_blocksize)[0]
    assert max(seen) == widest
    reference = seigh(operator(A), "cpu", torch.float64, 40, seed=0, meas_blocksize=40)
    torch.testing.assert_close(ews, reference[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("n", "max_columns", "expected"), [(100, None, 256), (2**20, None, 2), (2**23, None, 1), (2**20, 5, 5)]
)
def test_default_blocks_hold_a_bounded_number_of_entries(n, max_columns, expected):
    op = DiagonalLinearOperator(torch.ones(n))
    op.max_columns = max_columns
    assert block_width(op, None, 1000) == expected
    assert block_width(op, 3, 1000) == min(3, max_columns or 3)


@pytest.mark.parametrize(
    ("recovery", "options", "expected"),
    [
        ("hmt", {}, 40),
        ("hmt", {"power_iters": 2}, 80),
        ("nystrom", {}, 20),
        ("singlepass", {}, 20),
        ("oversampled_33", {}, 53),
    ],
)
def test_num_products_counts_the_products(recovery, options, expected):
    A, _ = symmetric_matrix("fast_decay")
    foreign = TorchOnly(A)
    result = seigh(foreign, "cpu", torch.float64, 20, recovery_type=recovery, **options)
    assert result.num_products == foreign.num_columns == expected
    ews, evs = result
    assert result.eigenvalues is ews and result.eigenvectors is evs


@pytest.mark.parametrize("by_mag", [True, False])
def test_order_and_negative_eigenvalues(by_mag):
    A, _ = symmetric_matrix("low_rank")
    ews, _ = seigh(A, "cpu", torch.float64, 12, by_mag=by_mag)
    key = ews.abs() if by_mag else ews
    assert bool((key[:-1] >= key[1:]).all())
    assert float(ews.min()) < -1.9  # the negative eigenvalues are kept


def test_seed_repeats_and_generators_continue():
    A, _ = symmetric_matrix("slow_decay")
    first, again = seigh(A, "cpu", torch.float64, 10, seed=7), seigh(A, "cpu", torch.float64, 10, seed=7)
    torch.testing.assert_close(first[0], again[0], atol=0, rtol=0)
    generator = torch.Generator().manual_seed(7)
    one, two = (
        seigh(A, "cpu", torch.float64, 10, seed=generator),
        seigh(A, "cpu", torch.float64, 10, seed=generator),
    )
    assert not torch.equal(one[0], two[0])
