"""Bad input: a clear exception naming the argument and what was expected."""

import pytest
import torch

from curvkit.linear_operator import DenseLinearOperator
from curvkit.sketch import adaptive_seigh, apost_error, apost_error_bounds, seigh, ssvd

A = torch.eye(10, dtype=torch.float64)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: seigh(A, "cpu", torch.float64, 11), ValueError, "outer_dims must be at most .* 10"),
        (lambda: seigh(A, "cpu", torch.float64, 0), ValueError, "outer_dims"),
        (
            lambda: ssvd(torch.ones(10, 4, dtype=torch.float64), "cpu", torch.float64, 5),
            ValueError,
            "outer_dims",
        ),
        (
            lambda: seigh(A, "cpu", torch.float64, 3, noise_type="uniform"),
            ValueError,
            "noise_type must be one of",
        ),
        (
            lambda: seigh(A, "cpu", torch.float64, 3, recovery_type="qr"),
            ValueError,
            "recovery_type must be one of",
        ),
        (
            lambda: seigh(A, "cpu", torch.float64, 3, recovery_type="oversampled_2"),
            ValueError,
            "oversampled_<N>",
        ),
        (
            lambda: seigh(A, "cpu", torch.float64, 3, recovery_type="oversampled_x"),
            ValueError,
            "oversampled_<N>",
        ),
        (
            lambda: seigh(A, "cpu", torch.float64, 3, recovery_type="nystrom", power_iters=1),
            ValueError,
            "power_iters",
        ),
        (
            lambda: seigh(torch.ones(10, 4, dtype=torch.float64), "cpu", torch.float64, 3),
            ValueError,
            "square.*ssvd",
        ),
        (lambda: seigh(A, "cpu", torch.float32, 3), ValueError, "computes in torch.float64, but lop_dtype"),
        (lambda: seigh(A, "meta", torch.float64, 3), ValueError, "is on cpu, but lop_device is meta"),
        (
            lambda: seigh(A, "cpu", torch.int64, 3),
            TypeError,
            "lop_dtype must be torch.float32, torch.float64, torch.float16 or torch.bfloat16",
        ),
        (lambda: seigh(A, "nowhere", torch.float64, 3), TypeError, "lop_device must be a torch.device"),
        (lambda: seigh([1, 2], "cpu", torch.float64, 3), TypeError, "lop must have a 2-d .shape and @"),
        (lambda: seigh(A, "cpu", torch.float64, 3, meas_blocksize=0), ValueError, "meas_blocksize"),
        (lambda: seigh(A, "cpu", torch.float64, 3, lstsq_rcond=-1), ValueError, "lstsq_rcond"),
        (
            lambda: apost_error(A, torch.eye(9, dtype=torch.float64), "cpu", torch.float64),
            ValueError,
            "same shape",
        ),
        (
            lambda: apost_error(A, A.float(), "cpu", torch.float64),
            ValueError,
            "lop2 computes in torch.float32",
        ),
        (lambda: apost_error(A, A, "cpu", torch.float64, noise_type="ssrft"), ValueError, "noise_type"),
        (lambda: apost_error(A, A, "cpu", torch.float64, num_meas=0), ValueError, "num_meas"),
        (lambda: apost_error_bounds(5, 1.5), ValueError, r"rel_err must lie in \(0, 1\)"),
        (lambda: apost_error_bounds(0, 0.5), ValueError, "num_measurements"),
        (lambda: adaptive_seigh(A, "cpu", torch.float64, 2.0, max_dims=4), ValueError, "rel_err"),
        (lambda: adaptive_seigh(A, "cpu", torch.float64, 0.1, max_dims=40), ValueError, "max_dims"),
    ],
)
def test_bad_input_is_refused_with_a_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_foreign_product_of_another_dtype_is_refused():
    class Float32Only:
        shape = (10, 10)

        def __matmul__(self, X):
            return X.float()

    with pytest.raises(
        ValueError, match=r"returned a product of dtype torch\.float32, but lop_dtype is torch\.float64"
    ):
        seigh(Float32Only(), "cpu", torch.float64, 3)


def test_a_psd_tag_that_is_wrong_warns_and_stays_bounded():
    B = torch.diag(torch.cat([torch.linspace(-1.0, 1.0, 6, dtype=torch.float64), torch.zeros(34)]))
    with pytest.warns(UserWarning, match="tagged positive semi-definite"):
        ews, evs = seigh(DenseLinearOperator(B, psd=True), "cpu", torch.float64, 10, recovery_type="nystrom")
    torch.testing.assert_close((evs * ews) @ evs.T, B, atol=1e-10, rtol=0)
