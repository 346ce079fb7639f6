"""KFAC's algebra on given factors: products, closed forms, state dicts, bad input."""

import io
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from contract import contract_on_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from structured_factors import (
    CONV_BIAS,
    CONV_WEIGHT,
    EMBEDDING,
    LINEAR_BIAS,
    LINEAR_WEIGHT,
    PARAM_SHAPES,
    joined_order,
    kfac_blocks,
    kfac_factors,
    kfac_params,
    kfac_reference,
    positive,
    psd,
)

from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator
from curvkit.structured import _factors as factors_module


def _kfac(dtype=torch.float64, seed=0):
    factors = kfac_factors(dtype, seed)
    return KroneckerFactoredLinearOperator(kfac_params(dtype), kfac_blocks(factors)), kfac_reference(factors)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"], scope="module")
def case(request):
    return _kfac(request.param)


TestContract = contract_on_cases()


def test_structure():
    operator, _ = _kfac()
    assert operator.is_symmetric and operator.is_psd and operator.shape == (72, 72)
    assert [block.params for block in operator.blocks] == [
        (CONV_WEIGHT, CONV_BIAS),
        (LINEAR_WEIGHT,),
        (LINEAR_BIAS,),
        (EMBEDDING,),
    ]
    assert operator.in_layout.shapes == tuple(torch.Size(shape) for shape in PARAM_SHAPES)


def test_one_layer_block_is_torch_kron():
    """The plainest case, against ``torch.kron`` alone: a linear layer, weight then bias apart."""
    G, A = psd(3, 0), psd(4, 1)
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)],
        [KroneckerBlock((0,), G, A), KroneckerBlock((1,), G)],
    )
    torch.testing.assert_close(operator.to_dense(), torch.block_diag(torch.kron(G, A), G))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_forms_match_torch_linalg(dtype):
    operator, reference = _kfac(dtype)
    tol = {"rtol": 1e-10, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 0}
    sign, logabsdet = torch.linalg.slogdet(reference)
    assert sign == 1
    for value, expected in [
        (operator.trace(), reference.trace()),
        (operator.logdet(), logabsdet),
        (operator.det(), torch.linalg.det(reference)),
        (operator.frobenius_norm(), torch.linalg.matrix_norm(reference)),
    ]:
        assert value.dtype == dtype and value.shape == ()
        torch.testing.assert_close(value.double(), expected, **tol)


def test_large_logdet_without_overflow():
    """Scaled factors: ``det`` overflows float32 (and float64), ``logdet`` stays exact."""
    factors = {name: 100.0 * value for name, value in kfac_factors().items()}
    operator = KroneckerFactoredLinearOperator(kfac_params(torch.float32), kfac_blocks(factors))
    _, expected = torch.linalg.slogdet(kfac_reference(factors))
    assert expected > 89  # e^89 overflows float32
    torch.testing.assert_close(operator.logdet().double(), expected, rtol=1e-6, atol=0)
    assert operator.det().isinf()


def test_factors_are_symmetrized_and_take_the_parameters_dtype():
    G = psd(3, 0)
    G[0, 1] += 1e-9  # symmetric only to rounding, as factors summed over batches are
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(3, dtype=torch.float64)], [KroneckerBlock((0,), G)]
    )
    stored = operator.blocks[0].output_factor
    assert torch.equal(stored, stored.T) and stored[0, 1] == (G[0, 1] + G[1, 0]) / 2
    assert operator.is_symmetric
    in_float32 = KroneckerFactoredLinearOperator(
        [torch.zeros(3, dtype=torch.float32)], [KroneckerBlock((0,), G)]
    )
    assert in_float32.dtype == torch.float32 and in_float32.blocks[0].output_factor.dtype == torch.float32


@pytest.mark.parametrize("copy", [True, False])
def test_factors_are_symmetrized_copies_unless_handed_over(copy):
    G = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    G = G + G.T if not copy else G  # handed over: exactly symmetric, the caller's promise
    given = G.clone()
    operator = KroneckerFactoredLinearOperator(
        [torch.zeros(5, dtype=torch.float64)], [KroneckerBlock((0,), given)], copy=copy
    )
    stored = operator.blocks[0].output_factor
    assert torch.equal(stored, (G + G.T) / 2)
    assert (stored is not given and torch.equal(given, G)) if copy else stored.data_ptr() == given.data_ptr()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8, 9])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_symmetrize_by_the_mean_or_the_lower_triangle(monkeypatch, size, layout):
    # several tile pairs, partial edge ones
    monkeypatch.setattr(factors_module, "SYMMETRIZE_TILE", 3)
    F = torch.randn(size, size, generator=torch.Generator().manual_seed(size))
    F = F.T if layout == "transposed" else F
    expected = (F + F.T) / 2
    result = factors_module.symmetrize_(F.clone())
    assert torch.equal(result, expected) and torch.equal(result, result.T)
    assert torch.equal(factors_module.symmetrized(F), expected)
    F64 = F.double()  # converted, then symmetrized: one copy
    assert torch.equal(factors_module.symmetrized(F, torch.float64), (F64 + F64.T) / 2)
    lower = F.tril()
    assert torch.equal(factors_module.symmetrize_(F.clone(), mean=False), lower + lower.tril(-1).T)
    scaled = 0.3 * lower  # scaled on the way: the same numbers as a separate pass
    mirrored = factors_module.symmetrize_(F.clone(), mean=False, scale=0.3)
    assert torch.equal(mirrored, scaled + scaled.tril(-1).T)
    assert torch.equal(factors_module.symmetrize_(F.clone(), scale=0.3), (F + F.T) * (0.5 * 0.3))


@pytest.mark.parametrize("size, tile, padded", [(8, 3, True), (7, 3, False), (8, 8, False)])
def test_new_factor_pads_rows_a_cache_set_period_apart(monkeypatch, size, tile, padded):
    # float64 rows of 8 entries lie 64 bytes apart: a multiple of the (here) 32-byte period;
    # a factor of one tile is mirrored without tile pairs, and needs no padding
    monkeypatch.setattr(factors_module, "SYMMETRIZE_TILE", tile)
    monkeypatch.setattr(factors_module, "CACHE_SET_PERIOD", 32)
    factor = factors_module.new_factor(size, torch.float64, torch.device("cpu"))
    assert factor.shape == (size, size) and factor.dtype == torch.float64
    assert factor.stride() == ((size + 8, 1) if padded else (size, 1))  # one 64-byte line of padding
    F = torch.randn(size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    lower = factor.copy_(F).tril()
    assert torch.equal(factors_module.symmetrize_(factor, mean=False), lower + lower.tril(-1).T)


def test_copy_must_be_a_bool():
    with pytest.raises(TypeError, match="copy must be a bool"):
        KroneckerFactoredLinearOperator([torch.zeros(2)], [KroneckerBlock((0,), torch.eye(2))], copy=1)


def test_shapes_instead_of_parameters():
    factors = kfac_factors()
    from_shapes = KroneckerFactoredLinearOperator(PARAM_SHAPES, kfac_blocks(factors))
    assert from_shapes.dtype == torch.float64 and from_shapes.device == torch.device("cpu")
    torch.testing.assert_close(from_shapes.to_dense(), kfac_reference(factors))
    as_float32 = KroneckerFactoredLinearOperator(PARAM_SHAPES, kfac_blocks(factors), dtype=torch.float32)
    assert as_float32.blocks[0].input_factor.dtype == torch.float32


# ------------------------------------------------------------------------------------ state dicts
def test_state_dict_round_trip_through_torch_save():
    operator, reference = _kfac()
    buffer = io.BytesIO()
    torch.save(operator.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    loaded = KroneckerFactoredLinearOperator.from_state_dict(state)
    torch.testing.assert_close(loaded.to_dense(), reference, rtol=0, atol=0)
    assert loaded.shape == operator.shape and loaded.dtype == operator.dtype
    in_float32 = KroneckerFactoredLinearOperator.from_state_dict(state, kfac_params(torch.float32))
    assert in_float32.dtype == torch.float32
    other, other_reference = _kfac(seed=10)
    other.load_state_dict(state)
    torch.testing.assert_close(other.to_dense(), reference, rtol=0, atol=0)
    assert not torch.allclose(other_reference, reference)


def test_state_dict_loads_in_another_process(tmp_path):
    operator, _ = _kfac()
    path = tmp_path / "kfac.pt"
    torch.save(operator.state_dict(), path)
    script = (
        "import sys, torch\n"
        "from curvkit.structured import KroneckerFactoredLinearOperator as K\n"
        f"state = torch.load({str(path)!r}, weights_only=True)\n"
        "print(repr(K.from_state_dict(state).logdet().item()))\n"
    )
    root = str(Path(__file__).parents[2])
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": root, "PATH": ""},
    )
    assert float(result.stdout) == operator.logdet().item()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda state: {**state, "format": "other"}, "format"),
        (lambda state: [state], "state_dict must be"),
        (lambda state: {**state, "shapes": [[2, 2], *state["shapes"][1:]]}, "parameters of shapes"),
        (
            lambda state: {**state, "blocks": [{**state["blocks"][0], "extra": 1}, *state["blocks"][1:]]},
            "entries",
        ),
    ],
)
def test_load_state_dict_refuses_other_states(change, message):
    operator, _ = _kfac()
    with pytest.raises(ValueError, match=message):
        operator.load_state_dict(change(operator.state_dict()))


# ------------------------------------------------------------------------------------ bad input
def _blocks_with(index, **changes):
    blocks = kfac_blocks(kfac_factors())
    blocks[index] = replace(blocks[index], **changes)
    return blocks


BAD_BLOCKS = {
    "output factor of the wrong size": (
        lambda: _blocks_with(1, output_factor=psd(4, 0)),
        ValueError,
        r"blocks\[1\] needs an output factor of size 3 \(the weight's rows, \[3, 5\]\), got size 4",
    ),
    "input factor of the wrong size": (
        lambda: _blocks_with(1, input_factor=psd(6, 0)),
        ValueError,
        r"blocks\[1\] needs an input factor of size 5",
    ),
    "joined input factor without the bias's 1": (
        lambda: _blocks_with(0, input_factor=psd(8, 0)),
        ValueError,
        r"input factor of size 9 \(the weight's columns and the bias\)",
    ),
    "non-square factor": (
        lambda: _blocks_with(1, input_factor=torch.zeros(5, 4, dtype=torch.float64)),
        ValueError,
        r"blocks\[1\].input_factor must be a square matrix \[n, n\] or a diagonal \[n\], got shape \[5, 4\]",
    ),
    "bias with an input factor": (
        lambda: _blocks_with(2, input_factor=psd(2, 0)),
        ValueError,
        r"blocks\[2\] is a bias alone",
    ),
    "weight without an input factor": (
        lambda: _blocks_with(1, input_factor=None),
        ValueError,
        r"blocks\[1\] covers a weight \(parameter 3\), so it needs an input factor",
    ),
    "input-major with a bias": (
        lambda: _blocks_with(0, input_major=True),
        ValueError,
        r"blocks\[0\]: an input-major weight \(nn.Embedding\) has no bias",
    ),
    "negative diagonal": (
        lambda: _blocks_with(3, input_factor=-positive(6, 0)),
        ValueError,
        r"blocks\[3\].input_factor is a diagonal with negative entries",
    ),
    "parameter out of range": (
        lambda: _blocks_with(1, params=(7,)),
        ValueError,
        r"blocks\[1\].params lists parameter 7, but there are 5",
    ),
    "three parameters": (
        lambda: _blocks_with(1, params=(3, 0, 2)),
        ValueError,
        r"params must be \(weight,\), \(bias,\) or \(weight, bias\)",
    ),
    "parameter in two blocks": (
        lambda: _blocks_with(2, params=(LINEAR_WEIGHT,), input_factor=psd(5, 0)),
        ValueError,
        r"Parameter 3 is in blocks\[1\] and blocks\[2\]",
    ),
    "parameter in no block": (
        lambda: kfac_blocks(kfac_factors())[:3],
        ValueError,
        r"Parameters \[1\] are in no block",
    ),
    "not a block": (
        lambda: [*kfac_blocks(kfac_factors())[:3], (1,)],
        TypeError,
        r"blocks\[3\] must be a KroneckerBlock",
    ),
    "nan in a factor": (
        lambda: _blocks_with(1, output_factor=torch.full((3, 3), math.nan, dtype=torch.float64)),
        ValueError,
        "non-finite",
    ),
    "input_major not a bool": (
        lambda: _blocks_with(3, input_major="yes"),
        TypeError,
        "input_major must be a bool",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_BLOCKS))
def test_bad_blocks(name):
    blocks, error, message = BAD_BLOCKS[name]
    with pytest.raises(error, match=message):
        KroneckerFactoredLinearOperator(kfac_params(), blocks())


def test_own_factors_are_checked_for_finiteness_on_their_diagonals():
    """``copy=False`` takes (PSD) factors as they are and checks their diagonals, which bound every
    entry: an overflowed diagonal raises; a copy checks every entry, a nan off the diagonal too."""
    overflowed = psd(3, 0)
    overflowed[1, 1] = math.inf
    with pytest.raises(ValueError, match=r"blocks\[1\].output_factor has non-finite"):
        KroneckerFactoredLinearOperator(kfac_params(), _blocks_with(1, output_factor=overflowed), copy=False)
    off_diagonal = psd(3, 0)
    off_diagonal[0, 2] = off_diagonal[2, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        KroneckerFactoredLinearOperator(kfac_params(), _blocks_with(1, output_factor=off_diagonal))


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ([], TypeError, "non-empty list"),
        (torch.zeros(3), TypeError, "non-empty list"),
        ([torch.zeros(3), torch.zeros(3, dtype=torch.float64)], ValueError, "share one dtype"),
        ([torch.zeros(3, dtype=torch.int64)], TypeError, "floating-point"),
        ([(3,), "x"], TypeError, "tensors or of shapes"),
    ],
)
def test_bad_params(params, error, message):
    with pytest.raises(error, match=message):
        KroneckerFactoredLinearOperator(params, [KroneckerBlock((0,), psd(3, 0))])


@settings(max_examples=30, deadline=None)
@given(
    out_features=st.integers(1, 4),
    kernel=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    bias=st.sampled_from(["none", "apart", "joined"]),
    seed=st.integers(0, 2**16),
)
def test_random_layers_are_psd_kronecker_blocks(out_features, kernel, bias, seed):
    """A weight ``[out, *kernel]`` with no bias, a bias apart, or a joined one: dense ``torch.kron``."""
    in_features = math.prod(kernel)
    G, A = psd(out_features, seed), psd(in_features + (bias == "joined"), seed + 1)
    params = [torch.zeros(out_features, *kernel, dtype=torch.float64)]
    if bias == "none":
        blocks, dense_matrix = [KroneckerBlock((0,), G, A)], torch.kron(G, A)
    elif bias == "apart":
        params.append(torch.zeros(out_features, dtype=torch.float64))
        blocks, dense_matrix = (
            [KroneckerBlock((0,), G, A), KroneckerBlock((1,), G)],
            torch.block_diag(torch.kron(G, A), G),
        )
    else:
        params.append(torch.zeros(out_features, dtype=torch.float64))
        order = joined_order(out_features, in_features)
        blocks, dense_matrix = [KroneckerBlock((0, 1), G, A)], torch.kron(G, A)[order][:, order]
    operator = KroneckerFactoredLinearOperator(params, blocks)
    torch.testing.assert_close(operator.to_dense(), dense_matrix, rtol=1e-12, atol=1e-14)
    X = torch.randn(operator.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(operator @ X, dense_matrix @ X, rtol=1e-12, atol=1e-14)
    assert (X * (operator @ X)).sum(0).min() >= -1e-12  # xᵀ K x ≥ 0


def test_a_factor_given_to_two_blocks_is_copied_once():
    """A weight and its bias given one output factor keep one copy; equal factors apart stay apart."""
    W, b = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    G, A = (
        2.0 * torch.eye(3, dtype=torch.float64),
        torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64),
    )
    for bias_factor, shared in ((G, True), (G.clone(), False)):
        kfac = KroneckerFactoredLinearOperator(
            [W, b], [KroneckerBlock((0,), G, A), KroneckerBlock((1,), bias_factor)]
        )
        weight_block, bias_block = kfac.state_dict()["blocks"]
        pointers = {block["output_factor"].data_ptr() for block in (weight_block, bias_block)}
        assert len(pointers) == (1 if shared else 2) and G.data_ptr() not in pointers  # copies
        torch.testing.assert_close(kfac.to_dense(), torch.block_diag(torch.kron(G, A), G))
