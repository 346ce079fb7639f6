"""Weighting and iteration of the mini-batch engine."""

import pytest
import torch

from curvkit._engine import MiniBatchEngine


def test_weights_reproduce_the_full_data_mean_and_sum():
    data = [(torch.ones(size, 2), torch.zeros(size)) for size in (3, 5, 2)]
    engine = MiniBatchEngine(data, torch.device("cpu"))
    assert engine.num_data == 10
    weights = [engine.weight(batch, "mean") for batch in engine.batches()]
    assert weights == [0.3, 0.5, 0.2]
    assert [engine.weight(batch, "sum") for batch in engine.batches()] == [1.0, 1.0, 1.0]
    # a per-batch mean weighted this way is the full-data mean
    values = torch.arange(10.0)
    batches = [(values[:3], None), (values[3:8], None), (values[8:], None)]
    engine = MiniBatchEngine(batches, torch.device("cpu"))
    total = engine.sum_over_batches(lambda batch: batch.X.mean(), "mean")
    assert torch.isclose(total, values.mean())


def test_given_num_data_is_not_recomputed():
    engine = MiniBatchEngine([(torch.ones(4, 1), torch.ones(4))], torch.device("cpu"), num_data=8)
    assert engine.num_data == 8
    assert next(iter(engine.batches())).size == 4


def test_dict_inputs_use_batch_size_fn_and_move_to_device():
    data = [({"a": torch.ones(3, 2), "b": torch.ones(3)}, torch.zeros(3))]
    engine = MiniBatchEngine(data, torch.device("cpu"), batch_size_fn=lambda X: X["a"].shape[0])
    (batch,) = list(engine.batches())
    assert batch.size == 3 and set(batch.X) == {"a", "b"}
    with pytest.raises(ValueError, match="batch_size_fn is required"):
        _ = MiniBatchEngine(data, torch.device("cpu")).num_data


def test_concatenation_keeps_batch_order():
    data = [(torch.full((size, 1), float(index)), None) for index, size in enumerate((2, 1, 3))]
    engine = MiniBatchEngine(data, torch.device("cpu"))
    rows = engine.concatenate_over_batches(lambda batch: batch.X[:, 0])
    assert rows.tolist() == [0.0, 0.0, 1.0, 2.0, 2.0, 2.0]
