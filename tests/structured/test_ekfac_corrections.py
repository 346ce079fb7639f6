"""EKFAC's corrected eigenvalues against the dense second moment of per-example gradients."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from structured_factors import generator, kfac_blocks, kfac_factors, kfac_params, matrix, psd

from curvkit.structured import EigenvalueCorrections, KroneckerBlock, KroneckerFactoredLinearOperator
from curvkit.structured.ekfac_corrections import uses_gramian

N, T = 7, 5


def _basis_matrix(block):
    """``Q_L ⊗ Q_R`` on the block's matrix (row-major), from the block's fields."""
    rows, columns = block.eigenvalues.shape
    output_dim, input_dim = (columns, rows) if block.input_major else (rows, columns)
    output = torch.eye(output_dim) if block.output_eigenvectors is None else block.output_eigenvectors
    inputs = torch.eye(input_dim) if block.input_eigenvectors is None else block.input_eigenvectors
    left, right = (inputs, output) if block.input_major else (output, inputs)
    return torch.kron(left.double().contiguous(), right.double().contiguous())


def _expected(block, gradients, scale):
    """``diag(Kᵀ (s Σ_n vec W_n vec W_nᵀ) K)`` for per-example gradients ``W_n`` ``[N, rows, columns]``."""
    vectors = gradients.double().reshape(gradients.shape[0], -1)
    basis = _basis_matrix(block)
    second_moment = scale * vectors.T @ vectors
    return torch.diagonal(basis.T @ second_moment @ basis).reshape(block.eigenvalues.shape)


def _batch(dtype, seed=0):
    """Layer data for the four blocks of the KFAC problem, and the per-example gradient matrices."""
    g_conv, a_conv = (
        matrix(N * T, 4, seed, dtype).reshape(N, T, 4),
        matrix(N * T, 9, seed + 1, dtype).reshape(N, T, 9),
    )
    a_conv[..., -1] = 1.0  # the bias's input, appended
    g_linear, a_linear = matrix(N, 3, seed + 2, dtype), matrix(N, 5, seed + 3, dtype)
    g_embedding = matrix(N * T, 3, seed + 4, dtype).reshape(N, T, 3)
    tokens = torch.randint(0, 6, (N, T), generator=generator(seed + 5))
    tokens[0] = 2  # one example repeats a token: its rows add up before squaring
    inputs = [(g_conv, a_conv), (g_linear, a_linear), (g_linear, None), (g_embedding, tokens)]
    one_hot = torch.nn.functional.one_hot(tokens, 6).to(dtype)
    gradients = [
        g_conv.transpose(1, 2) @ a_conv,
        torch.einsum("ni,nj->nij", g_linear, a_linear),
        g_linear.unsqueeze(2),
        one_hot.transpose(1, 2) @ g_embedding,
    ]
    return inputs, gradients


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_every_block_kind_against_the_dense_second_moment(dtype):
    kfac = KroneckerFactoredLinearOperator(kfac_params(dtype), kfac_blocks(kfac_factors(dtype)))
    corrections = kfac.eigenvalue_corrections()
    inputs, gradients = _batch(dtype)
    for index, (g, a) in enumerate(inputs):
        corrections.add(index, g, a, scale=1 / N)
    ekfac = corrections.result()
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for block, W in zip(ekfac.blocks, gradients):
        assert block.eigenvalues.dtype == dtype
        torch.testing.assert_close(block.eigenvalues.double(), _expected(block, W, 1 / N), **tol)
    total = sum(W.double().square().sum() for W in gradients) / N  # the eigenbasis is orthonormal
    torch.testing.assert_close(ekfac.trace().double(), total, **tol)
    for basis_block, block in zip(kfac.eigendecomposed().blocks, ekfac.blocks):  # same eigenbasis
        assert torch.equal(basis_block.output_eigenvectors, block.output_eigenvectors)


def test_per_example_gradients_give_the_same():
    kfac = KroneckerFactoredLinearOperator(kfac_params(), kfac_blocks(kfac_factors()))
    from_layers, from_gradients = kfac.eigenvalue_corrections(), kfac.eigenvalue_corrections()
    inputs, gradients = _batch(torch.float64)
    per_parameter = [
        (gradients[0][:, :, :8].reshape(N, 4, 2, 2, 2), gradients[0][:, :, 8]),  # conv weight, conv bias
        gradients[1],
        gradients[2].squeeze(2),
        gradients[3],
    ]
    for index, ((g, a), parameter_gradients) in enumerate(zip(inputs, per_parameter)):
        from_layers.add(index, g, a, scale=0.5)
        from_gradients.add_gradients(index, parameter_gradients, scale=0.5)
    torch.testing.assert_close(
        from_gradients.result().to_dense(), from_layers.result().to_dense(), rtol=1e-12, atol=1e-14
    )


def test_batches_add_up():
    kfac = KroneckerFactoredLinearOperator(kfac_params(), kfac_blocks(kfac_factors()))
    whole, halves = kfac.eigenvalue_corrections(), kfac.eigenvalue_corrections()
    inputs, _ = _batch(torch.float64)
    for index, (g, a) in enumerate(inputs):
        whole.add(index, g, a, scale=1 / N)
        for part in (slice(0, 3), slice(3, N)):
            halves.add(index, g[part], None if a is None else a[part], scale=1 / N)
    torch.testing.assert_close(halves.result().to_dense(), whole.result().to_dense(), rtol=1e-12, atol=1e-14)


def test_sums_of_separate_accumulators_add_up():
    """Per-batch accumulators reduced with ``add_sums`` (as across processes) equal one accumulator."""
    kfac = KroneckerFactoredLinearOperator(kfac_params(), kfac_blocks(kfac_factors()))
    whole, total = kfac.eigenvalue_corrections(), kfac.eigenvalue_corrections()
    inputs, _ = _batch(torch.float64)
    for part in (slice(0, 3), slice(3, N)):
        batch = EigenvalueCorrections(total.basis)
        for index, (g, a) in enumerate(inputs):
            whole.add(index, g[part], None if a is None else a[part], scale=1 / N)
            batch.add(index, g[part], None if a is None else a[part], scale=2.0)
        total.add_sums(batch.sums, scale=1 / (2 * N))
    torch.testing.assert_close(total.result().to_dense(), whole.result().to_dense(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="sums must hold one tensor per block"):
        total.add_sums(total.sums[:-1])


def _single_weight(out_features, in_features, seed=0):
    G, A = psd(out_features, seed), psd(in_features, seed + 1)
    return KroneckerFactoredLinearOperator(
        [torch.zeros(out_features, in_features, dtype=torch.float64)], [KroneckerBlock((0,), G, A)]
    )


ROUTES = {  # (positions, out, in): the route the sizes select
    "gramian, one position": (1, 6, 5),
    "gramian, two positions": (2, 16, 16),
    "per-example, vectors rotated first": (3, 3, 4),
    "per-example, gradients rotated": (10, 2, 3),
}


@pytest.mark.parametrize("max_entries", [2**24, 1], ids=["one-chunk", "chunks-of-one-example"])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_routes(route, max_entries):
    positions, out_features, in_features = ROUTES[route]
    assert uses_gramian(positions, out_features, in_features) == route.startswith("gramian")
    rotate_first = positions * (out_features**2 + in_features**2) <= out_features * in_features * (
        out_features + in_features
    )
    assert route.startswith("gramian") or rotate_first == ("first" in route)
    g, a = (
        matrix(N * positions, out_features, 1).reshape(N, positions, -1),
        matrix(N * positions, in_features, 2).reshape(N, positions, -1),
    )
    corrections = _single_weight(out_features, in_features).eigenvalue_corrections(max_entries=max_entries)
    corrections.add(0, g, a, scale=0.25)
    block = corrections.result().blocks[0]
    torch.testing.assert_close(
        block.eigenvalues, _expected(block, g.transpose(1, 2) @ a, 0.25), rtol=1e-10, atol=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(
    examples=st.integers(1, 5),
    positions=st.integers(1, 4),
    out_features=st.integers(1, 5),
    in_features=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(examples, positions, out_features, in_features, seed):
    g = matrix(examples * positions, out_features, seed).reshape(examples, positions, -1)
    a = matrix(examples * positions, in_features, seed + 1).reshape(examples, positions, -1)
    corrections = _single_weight(out_features, in_features, seed).eigenvalue_corrections()
    corrections.add(0, g, a)
    block = corrections.result().blocks[0]
    torch.testing.assert_close(
        block.eigenvalues, _expected(block, g.transpose(1, 2) @ a, 1.0), rtol=1e-10, atol=1e-12
    )


def test_input_major_block_with_a_dense_input_factor_takes_one_hot_rows():
    E = torch.zeros(6, 3, dtype=torch.float64)
    kfac = KroneckerFactoredLinearOperator(
        [E], [KroneckerBlock((0,), psd(3, 0), psd(6, 1), input_major=True)]
    )
    tokens = torch.randint(0, 6, (N, T), generator=generator(0))
    g = matrix(N * T, 3, 1).reshape(N, T, 3)
    one_hot = torch.nn.functional.one_hot(tokens, 6).double()
    corrections = kfac.eigenvalue_corrections()
    corrections.add(0, g, one_hot)
    block = corrections.result().blocks[0]
    torch.testing.assert_close(
        block.eigenvalues, _expected(block, one_hot.transpose(1, 2) @ g, 1.0), rtol=1e-10, atol=1e-12
    )
    with pytest.raises(ValueError, match="diagonal input factor"):
        kfac.eigenvalue_corrections().add(0, g, tokens)


def _corrections():
    return KroneckerFactoredLinearOperator(
        kfac_params(), kfac_blocks(kfac_factors())
    ).eigenvalue_corrections()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.result(), ValueError, r"blocks \[0, 1, 2, 3\] received no gradients"),
        (
            lambda c: c.add(1, torch.ones(N, 4), torch.ones(N, 5)),
            ValueError,
            r"output_gradients must have shape \[N, 3\]",
        ),
        (
            lambda c: c.add(1, torch.ones(N, 3), torch.ones(N + 1, 5)),
            ValueError,
            r"inputs must have shape \[N, 5\]",
        ),
        (
            lambda c: c.add(0, torch.ones(N, T, 4), torch.ones(N, T - 1, 9)),
            ValueError,
            "inputs must have shape",
        ),
        (
            lambda c: c.add(1, torch.ones(N, 3)),
            ValueError,
            r"blocks\[1\] covers a weight: inputs are required",
        ),
        (lambda c: c.add(2, torch.ones(N, 3), scale=-1.0), ValueError, "scale must be a finite non-negative"),
        (lambda c: c.add(3, torch.ones(N, T, 3), torch.full((N, T), 6)), ValueError, r"must lie in \[0, 6\)"),
        (
            lambda c: c.add(1, torch.ones(N, 3), torch.ones(N, 5, dtype=torch.int64)),
            ValueError,
            "input-major",
        ),
        (lambda c: c.add(4, torch.ones(N, 3)), ValueError, "block must be below 4"),
        (
            lambda c: c.add(1, [[1.0]], torch.ones(N, 5)),
            TypeError,
            "output_gradients must be a real floating-point",
        ),
        (lambda c: c.add_gradients(0, torch.ones(N, 4, 2, 2, 2)), ValueError, r"must hold 2 tensor\(s\)"),
        (
            lambda c: c.add_gradients(1, torch.ones(N, 5, 3)),
            ValueError,
            r"gradients must have shape \[N, 3, 5\]",
        ),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(_corrections())


def test_basis_must_be_an_eigenbasis_operator():
    with pytest.raises(TypeError, match="EigenCorrectedKroneckerLinearOperator"):
        EigenvalueCorrections(KroneckerFactoredLinearOperator(kfac_params(), kfac_blocks(kfac_factors())))


def test_moments_that_rounding_leaves_negative_are_zero():
    """Two positions whose terms of the per-example gradient nearly cancel (``a₂ ≈ −a₁``): the
    Gramian route sums the products of their pairs, large terms of both signs, which round to
    negative sums where the moment is about 0. The eigenvalues are second moments: 0 there."""
    g, a = matrix(1, 16, 1, torch.float32), matrix(1, 16, 2, torch.float32)
    g, a = torch.stack([g, g], 1), torch.stack([a, -a * (1 + 2**-20)], 1)  # [1, 2, 16]
    assert uses_gramian(2, 16, 16)
    kfac = KroneckerFactoredLinearOperator(
        [torch.zeros(16, 16)], [KroneckerBlock((0,), psd(16, 3).float(), psd(16, 4).float())]
    )
    corrections = kfac.eigenvalue_corrections()
    corrections.add(0, g, a)
    assert corrections.sums[0].min() < 0
    block = corrections.result().blocks[0]
    assert block.eigenvalues.min() == 0
    expected = _expected(block, g.transpose(1, 2) @ a, 1.0)
    scale = float(_expected(block, g.transpose(1, 2) @ a.abs(), 1.0).max())  # the terms' size
    torch.testing.assert_close(block.eigenvalues.double(), expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_tiny_float32_gradients(route):
    """Gradients of ``10⁻¹⁵`` in float32 (a mean loss's, squared: ``10⁻³⁰``, near float32's
    smallest normal number): every route as float64 gives it, to float32's precision."""
    positions, out_features, in_features = ROUTES[route]
    g = 1e-15 * matrix(N * positions, out_features, 1).reshape(N, positions, -1)
    a = matrix(N * positions, in_features, 2).reshape(N, positions, -1)
    corrections = KroneckerFactoredLinearOperator(
        [torch.zeros(out_features, in_features)],
        [KroneckerBlock((0,), psd(out_features, 0).float(), psd(in_features, 1).float())],
    ).eigenvalue_corrections()
    corrections.add(0, g.float(), a.float())
    block = corrections.result().blocks[0]
    expected = _expected(block, g.transpose(1, 2) @ a, 1.0)
    torch.testing.assert_close(
        block.eigenvalues.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.max())
    )
