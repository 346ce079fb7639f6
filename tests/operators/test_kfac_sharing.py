"""KFAC of embeddings and of weights tied between an embedding and an output head."""

import pytest
import torch
from kfac_formulas import calls, concatenated, expand, output_columns, rows
from kfac_problems import F64, VOCABULARY, block, language_problem
from torch import nn
from torch.nn import functional

from curvkit import KFACLinearOperator


def embedding_rows(model, loss_func, data, fisher_type):
    """The embedding's calls as rows of the table ``[V, d]``: one-hot tokens and output gradients."""
    X, y = concatenated(data)
    columns = lambda f: output_columns(loss_func, f, y, fisher_type)  # noqa: E731
    ((tokens, gradients),) = calls(model, model.embedding, X, columns)
    one_hot = functional.one_hot(tokens, VOCABULARY).to(F64)
    one_hot[..., 0] = 0  # padding_idx: no gradient
    return one_hot.expand(gradients.shape[0], *one_hot.shape), gradients, X


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
def test_embedding_has_a_diagonal_input_factor_of_token_counts(fisher_type):
    model, loss_func, data = language_problem(tied=False)
    params = list(model.parameters())
    kfac = KFACLinearOperator(
        model, loss_func, params, data, fisher_type=fisher_type, loss_average="batch+sequence"
    )
    one_hot, gradients, tokens = embedding_rows(model, loss_func, data, fisher_type)
    torch.testing.assert_close(
        block(kfac.to_dense(), params, 0), expand(one_hot, gradients), rtol=1e-10, atol=1e-12
    )
    counts = torch.bincount(tokens.flatten(), minlength=VOCABULARY).to(F64)
    counts[0] = 0
    factors = kfac.factored.blocks[0]
    assert factors.input_major and factors.input_factor.shape == (VOCABULARY,)
    torch.testing.assert_close(factors.input_factor, counts / tokens.numel())


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
def test_a_head_tied_to_the_embedding_sums_both_uses_as_expand_defines(fisher_type):
    """The table ``[V, d]`` is the head's weight; the embedding's rows are (one-hot, gradient) pairs.

    The loss's scale ``1/K`` lies on the vocabulary side for the head's rows and on the width
    side for the embedding's: it is taken out of the sums (rows of the summed loss, then
    ``1/K``), so that KFAC scales with the loss.
    """
    model, loss_func, data = language_problem(tied=True)
    params = list(model.parameters())
    assert len(params) == 2  # the tied table and the head's bias
    kfac = KFACLinearOperator(
        model, loss_func, params, data, fisher_type=fisher_type, loss_average="batch+sequence"
    )
    summed = nn.CrossEntropyLoss(reduction="sum")
    one_hot, embedding_gradients, X = embedding_rows(model, summed, data, fisher_type)
    _, y = concatenated(data)
    ((inputs, head_gradients),) = calls(
        model, model.head, X, lambda f: output_columns(summed, f, y, fisher_type)
    )
    u_head, v_head = rows(model.head, inputs, head_gradients)
    u = torch.cat([u_head, one_hot], dim=2)  # the vocabulary side
    v = torch.cat([v_head.expand(u_head.shape[0], *v_head.shape), embedding_gradients], dim=2)  # width side
    dense, terms = kfac.to_dense(), y.numel()
    torch.testing.assert_close(block(dense, params, 0), expand(u, v) / terms, rtol=1e-10, atol=1e-12)
    bias = expand(u_head, torch.ones_like(v_head[..., :1]).expand(u_head.shape[0], -1, -1, -1)) / terms
    torch.testing.assert_close(block(dense, params, 1), bias, rtol=1e-10, atol=1e-12)


def test_reduce_leaves_embeddings_on_expand():
    model, loss_func, data = language_problem(tied=False)
    params = list(model.parameters())
    kwargs = {"fisher_type": "type-2", "loss_average": "batch+sequence"}
    expanded = KFACLinearOperator(model, loss_func, params, data, kfac_approx="expand", **kwargs).to_dense()
    reduced = KFACLinearOperator(model, loss_func, params, data, kfac_approx="reduce", **kwargs).to_dense()
    torch.testing.assert_close(block(reduced, params, 0), block(expanded, params, 0), rtol=0, atol=0)
    assert not torch.allclose(block(reduced, params, 1), block(expanded, params, 1))
