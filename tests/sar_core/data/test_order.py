"""The batch order of in-memory training: resumable at any step, split across workers."""
import itertools

import pytest
import torch

from sar_core.data.order import batch_indices


def take(it, n):
    return [x.tolist() for x in itertools.islice(it, n)]


def test_a_run_resumed_at_step_k_sees_what_an_uninterrupted_run_saw_from_k():
    uninterrupted = take(batch_indices(50, 8, 0, 1, seed=3, start_step=0), 20)  # 6 batches an epoch: crosses epochs
    assert take(batch_indices(50, 8, 0, 1, seed=3, start_step=7), 13) == uninterrupted[7:]
    assert uninterrupted[:6] != take(batch_indices(50, 8, 0, 1, seed=4, start_step=0), 6)  # the seed matters


def test_workers_split_each_global_batch_without_overlap():
    single = take(batch_indices(40, 8, 0, 1, seed=0, start_step=0), 5)
    ranks = [take(batch_indices(40, 8, r, 2, seed=0, start_step=0), 5) for r in range(2)]
    for step, whole in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(whole)
    epoch = torch.tensor([i for batch in single for i in batch])
    assert epoch.unique().numel() == 40  # one epoch: every row once


def test_impossible_batches_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        next(batch_indices(40, 9, 0, 2, seed=0, start_step=0))
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(batch_indices(4, 8, 0, 1, seed=0, start_step=0))
