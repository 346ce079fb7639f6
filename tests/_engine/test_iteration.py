"""Iteration over the data: checked batches, the data set's size, one iteration per pass."""

import pytest
import torch

from curvkit._engine.iteration import BatchIteration


def test_given_num_data_is_checked_against_every_pass():
    engine = BatchIteration([(torch.ones(4, 1), torch.ones(4))], torch.device("cpu"), num_data=8)
    assert engine.num_data == 8
    with pytest.raises(ValueError, match="num_data is 8, but data yielded 4 samples"):
        list(engine.batches())


def test_dict_inputs_use_batch_size_fn_and_move_to_device():
    data = [({"a": torch.ones(3, 2), "b": torch.ones(3)}, torch.zeros(3))]
    engine = BatchIteration(data, torch.device("cpu"), batch_size_fn=lambda X: X["a"].shape[0])
    (batch,) = list(engine.batches())
    assert batch.size == 3 and set(batch.X) == {"a", "b"}
    with pytest.raises(ValueError, match="batch_size_fn is required"):
        _ = BatchIteration(data, torch.device("cpu")).num_data


def test_flattened_sequence_targets_are_pointed_to_batch_size_fn():
    """Token ids [3, 11] with targets [33]: the message names both layouts and the fix."""
    engine = BatchIteration([(torch.zeros(3, 11, dtype=torch.long), torch.zeros(33))], torch.device("cpu"))
    with pytest.raises(
        ValueError,
        match=r"batch 0: X holds 3 samples but y has shape \[33\], 11 targets per sample\. .*keep the "
        r"sequence axis \(output \[N, C, T\], y \[N, T\]\), or flatten .* "
        r"batch_size_fn=lambda X: X\.numel\(\)",
    ):
        list(engine.batches())


def test_each_pass_iterates_the_data_once():
    """tqdm.auto's asyncio base calls iter() in its constructor: the engine hands it an iterator,
    so that a DataLoader (with workers) starts once per pass, not twice."""

    class Counted(list):
        iterations = 0

        def __iter__(self):
            Counted.iterations += 1
            return super().__iter__()

    data = Counted([(torch.randn(2, 3), torch.randn(2, 1)) for _ in range(3)])
    for progressbar in (False, True):
        Counted.iterations = 0
        batches = list(BatchIteration(data, torch.device("cpu"), progressbar=progressbar).batches())
        assert len(batches) == 3 and Counted.iterations == 1
