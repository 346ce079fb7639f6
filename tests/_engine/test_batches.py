"""Weighting and combination of the mini-batches' results."""

import pytest
import torch

from curvkit._engine import MiniBatchEngine


def test_weighted_sums_reproduce_the_full_data_mean_and_sum():
    """A per-batch mean weighted by K_b / K is the full-data mean, however the data is split."""
    values = torch.arange(10.0)
    batches = [(values[:3], None), (values[3:8], None), (values[8:], None)]
    engine = MiniBatchEngine(batches, torch.device("cpu"))
    assert engine.num_data == 10
    assert torch.isclose(engine.sum_over_batches(lambda batch: batch.X.mean(), "mean"), values.mean())
    assert torch.isclose(engine.sum_over_batches(lambda batch: batch.X.sum(), "sum"), values.sum())


def test_accumulated_sums_add_every_batch_in_place_after_the_first():
    """``accumulate(batch, total)`` starts the sums at the first batch and adds into them after."""
    values = torch.arange(10.0)
    batches = [(values[:3], None), (values[3:8], None), (values[8:], None)]
    guarded = []
    engine = MiniBatchEngine(batches, torch.device("cpu"), before_batch=lambda: guarded.append(True))
    seen = []

    def accumulate(batch, total):
        seen.append(total)
        terms = [batch.X.sum(), batch.X.square().sum()]
        return terms if total is None else [t.add_(term) for t, term in zip(total, terms)]

    total = engine.accumulate_over_batches(accumulate)
    assert torch.equal(total[0], values.sum()) and torch.equal(total[1], values.square().sum())
    assert seen[0] is None and all(later[0] is total[0] for later in seen[1:]) and len(guarded) == 3


def test_loss_terms_weight_the_batches_and_empty_batches_are_skipped():
    """Batch means over kept entries (here: the non-negative ones) combine to the kept mean."""
    values = torch.tensor([1.0, -1.0, 3.0, -1.0, -1.0, 5.0, 6.0])
    batches = [(values[:3], None), (values[3:5], None), (values[5:], None)]
    engine = MiniBatchEngine(
        batches, torch.device("cpu"), loss_terms=lambda batch: float((batch.X >= 0).sum())
    )
    calls = []

    def kept_mean(batch):
        calls.append(batch.index)
        return batch.X[batch.X >= 0].mean()

    assert torch.isclose(engine.sum_over_batches(kept_mean, "mean"), values[values >= 0].mean())
    assert calls == [0, 2]  # the batch without kept entries is not evaluated (its mean is 0/0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("into", [False, True], ids=["new", "out"])
def test_half_precision_sums_accumulate_in_float32(dtype, into):
    """Summed in bfloat16, 600 ones stop at 256 (a one is below half the last bit from there on)."""
    engine = MiniBatchEngine(
        [(torch.ones(1, 1), torch.ones(1))] * 600, torch.device("cpu"), progressbar=False
    )
    out = [torch.full((2,), 7.0, dtype=dtype)] if into else None
    result = engine.sum_over_batches(lambda batch: [torch.ones(2, dtype=dtype)], "sum", out=out)
    assert result[0].dtype == dtype and result[0].tolist() == [600.0, 600.0]
    if into:
        assert result[0] is out[0]
    mean = engine.sum_over_batches(lambda batch: torch.full((), 0.1, dtype=dtype), "mean")
    assert mean.dtype == dtype and mean.item() == torch.tensor(0.1, dtype=dtype).item()


def test_concatenation_keeps_batch_order():
    data = [(torch.full((size, 1), float(index)), None) for index, size in enumerate((2, 1, 3))]
    engine = MiniBatchEngine(data, torch.device("cpu"))
    rows = engine.concatenate_over_batches(lambda batch: batch.X[:, 0])
    assert rows.tolist() == [0.0, 0.0, 1.0, 2.0, 2.0, 2.0]
