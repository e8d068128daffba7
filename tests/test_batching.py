import pytest
import torch

from scorecli.base.checks import check_limits
from scorecli.base.errors import UsageError
from scorecli.engine.batching import collate, pack


def test_pack_respects_the_budget_and_sorts_longest_first():
    lengths = [5, 50, 7, 7, 30, 1, 12, 300]
    batches = pack(lengths, batch_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [7]  # longer than the budget: alone
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 60
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


def test_collate_shifts_and_pads_right():
    input_ids, labels = collate([[1, 2, 3, 4], [1, 9]], pad_id=0)
    assert input_ids.tolist() == [[1, 2, 3], [1, 0, 0]]
    assert labels.tolist() == [[2, 3, 4], [9, 0, 0]]
    assert input_ids.dtype == torch.long


@pytest.mark.parametrize(("batch_tokens", "max_length"), [(0, None), (10, 1)])
def test_limits_out_of_range(batch_tokens, max_length):
    with pytest.raises(UsageError):
        check_limits(batch_tokens, max_length)
