from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys_bert.losses import per_sample_negatives_loss, shared_negatives_loss


def test_shared_loss_is_cross_entropy_with_duplicates_of_the_positive_masked():
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4)
    positive_ids = torch.tensor([10, 11, 10])  # users 0 and 2 share their positive
    negative_ids = torch.tensor([11, 12])  # the first negative is user 1's positive
    loss = shared_negatives_loss(users, positives, positive_ids, negatives, negative_ids, temperature=0.5)
    logits = torch.cat([users @ positives.T, users @ negatives.T], 1) / 0.5
    expected = []
    for row, (label, keep) in enumerate(
        [
            (0, [0, 1, 3, 4]),
            (1, [0, 1, 2, 4]),
            (2, [1, 2, 3, 4]),
        ]  # drop duplicates of each row's positive but the label
    ):
        expected.append(F.cross_entropy(logits[row, keep][None], torch.tensor([keep.index(label)])))
    assert torch.allclose(loss, torch.stack(expected).mean())


def test_per_sample_loss_ignores_padding_and_duplicates():
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4)
    positive_ids = torch.tensor([1, 2])
    negative_ids = torch.tensor([[5, 1, -1], [6, 7, 8]])  # row 0: a duplicate of the positive and one padding
    loss = per_sample_negatives_loss(users, positives, positive_ids, negatives, negative_ids, temperature=1.0)
    row0 = torch.stack([users[0] @ positives[0], users[0] @ negatives[0, 0]])
    row1 = torch.cat([(users[1] @ positives[1])[None], negatives[1] @ users[1]])
    expected = (F.cross_entropy(row0[None], torch.tensor([0])) + F.cross_entropy(row1[None], torch.tensor([0]))) / 2
    assert torch.allclose(loss, expected)


def test_logq_correction_subtracts_the_log_expected_count_of_each_candidate():
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 4)
    positive_ids, negative_ids = torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    log_frequency = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1]))
    loss = shared_negatives_loss(
        users, positives, positive_ids, negatives, negative_ids, 1.0, item_log_frequency=log_frequency
    )
    # in-batch candidate j: expected count 2 * p_j; uniform negatives: 3 / 5 each
    corrections = torch.cat([torch.log(2 * torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.6, 0.6, 0.6]))])
    logits = torch.cat([users @ positives.T, users @ negatives.T], 1) - corrections
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 1])))
