from __future__ import annotations

import numpy as np
import pytest
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
    # every candidate j, in-batch or sampled: expected count 2 * p_j (two in-batch draws) + 3 / 5 (three uniform)
    p = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    corrections = torch.log(2 * p + 3 / 5)  # candidates 0, 1 (in-batch), then 2, 3, 4 (sampled)
    logits = torch.cat([users @ positives.T, users @ negatives.T], 1) - corrections
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 1])))


def test_logq_correction_counts_only_the_items_that_can_be_drawn():
    """An item held out of training has log frequency -inf: the uniform share is over the other items."""
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 4)
    positive_ids, negative_ids = torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    p = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1, 0.0])  # item 5 held out
    loss = shared_negatives_loss(
        users, positives, positive_ids, negatives, negative_ids, 1.0, item_log_frequency=p.log()
    )
    corrections = torch.log(2 * p[:5] + 3 / 5)  # 3 uniform draws over the 5 items that can be drawn
    logits = torch.cat([users @ positives.T, users @ negatives.T], 1) - corrections
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 1])))


@pytest.mark.parametrize("num_negatives", [64, -1])
def test_items_held_out_of_training_are_never_negatives(num_negatives):
    """`cold_item_fraction`: held-out items are neither targets nor negatives (else training ranks them down);
    with none held out the draw is what it always was."""
    from recsys_bert.arguments import TrainingArguments
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.collators import TrainCollator
    from recsys_bert.modeling import RecsysBertConfig

    catalogue = Catalogue([[101, 7 + i, 102] for i in range(12)], pad_token_id=0)
    rows = [{"history": [1, 2], "target": 4}]
    args, config = TrainingArguments(num_negatives=num_negatives, seed=3), RecsysBertConfig(max_history=5)
    held_out = np.array([0, 5, 9])
    collator = TrainCollator(catalogue, config, args, held_out)
    drawn = np.concatenate([collator.collate_step(rows, 0, step)["negative_ids"].numpy() for step in range(20)])
    assert not np.isin(drawn, held_out).any()
    assert set(drawn.tolist()) == set(range(12)) - {0, 5, 9}  # every other item is drawn
    plain = TrainCollator(catalogue, config, args).collate_step(rows, 0, 7)["negative_ids"]
    expected = np.arange(12) if num_negatives < 0 else np.random.default_rng((3, 0, 7)).integers(0, 12, num_negatives)
    assert plain.tolist() == expected.tolist()


def test_every_catalogue_item_as_negative_is_the_exact_full_softmax():
    """`--num_negatives -1`: the shared negatives are the whole catalogue, the positive among them counted once."""
    from recsys_bert.arguments import TrainingArguments
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.collators import TrainCollator
    from recsys_bert.modeling import RecsysBertConfig

    catalogue = Catalogue([[101, 7 + i, 102] for i in range(12)], pad_token_id=0)
    rows = [{"history": [1, 2, 3], "target": 4}, {"history": [5], "target": 4}, {"history": [0, 9], "target": 11}]
    args = TrainingArguments(num_negatives=-1)
    assert not args.in_batch_negatives  # every item is a candidate already
    batch = TrainCollator(catalogue, RecsysBertConfig(max_history=5), args).collate_step(rows)
    assert batch["negative_ids"].tolist() == list(range(12))

    generator = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=-1)  # (batch, dim)
    items = torch.nn.functional.normalize(torch.randn(12, 8, generator=generator), dim=-1)  # (items, dim)
    positives = batch["positive_ids"]
    loss = shared_negatives_loss(users, items[positives], positives, items, torch.arange(12), 0.05, in_batch=False)
    expected = torch.nn.functional.cross_entropy(users @ items.T / 0.05, positives)
    torch.testing.assert_close(loss, expected)


def test_candidates_in_the_history_get_the_repeat_bias_that_ranking_gives_them(tiny):
    """Training's logits are ranking's: `RecsysBertModel.score` with the same histories, full softmax."""
    from recsys_bert.arguments import TrainingArguments
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.collators import TrainCollator
    from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel

    catalogue = Catalogue([[101, 7 + i, 102] for i in range(12)], pad_token_id=0)
    rows = [{"history": [1, 2, 3, 2], "target": 2}, {"history": [5], "target": 4}, {"history": [0, 9], "target": 11}]
    config = RecsysBertConfig(encoder_name_or_path=tiny, max_history=5, score_temperature=0.05)
    batch = TrainCollator(catalogue, config, TrainingArguments(num_negatives=-1)).collate_step(rows)
    assert batch["history_ids"].tolist() == [[2, 3, 2, 1], [5, -1, -1, -1], [9, 0, -1, -1]]  # most recent first
    model = RecsysBertModel.from_encoder(config)
    with torch.no_grad():
        model.repeat_bias.fill_(0.1)
    generator = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(3, 32, generator=generator), dim=-1)  # (batch, dim)
    items = torch.nn.functional.normalize(torch.randn(12, 32, generator=generator), dim=-1)  # (items, dim)
    positives, history = batch["positive_ids"], batch["history_ids"]
    loss = shared_negatives_loss(
        users, items[positives], positives, items, torch.arange(12), 0.05, False, None, history, model.repeat_bias
    )
    logits = model.score(users, items, history)  # (batch, items)
    torch.testing.assert_close(loss, F.cross_entropy(logits, positives))
    expected = users @ items.T / 0.05
    expected[0, [1, 2, 3]] += 2.0  # 0.1 / temperature, once per item however often it was picked
    expected[1, 5] += 2.0
    expected[2, [0, 9]] += 2.0
    torch.testing.assert_close(logits, expected)
    loss.backward()
    assert model.repeat_bias.grad.abs().item() > 0


def test_per_sample_negatives_in_the_history_get_the_repeat_bias():
    torch.manual_seed(0)
    users, positives, negatives = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 2, 4)
    positive_ids, negative_ids = torch.tensor([1, 2]), torch.tensor([[5, -1], [6, 7]])
    history_ids = torch.tensor([[5, 1], [8, -1]])  # row 0: a negative and the positive were picked before
    bias = torch.tensor([-0.5])
    loss = per_sample_negatives_loss(users, positives, positive_ids, negatives, negative_ids, 0.5, history_ids, bias)
    row0 = torch.stack([users[0] @ positives[0] - 0.5, users[0] @ negatives[0, 0] - 0.5]) / 0.5
    row1 = torch.cat([(users[1] @ positives[1])[None], negatives[1] @ users[1]]) / 0.5
    expected = (F.cross_entropy(row0[None], torch.tensor([0])) + F.cross_entropy(row1[None], torch.tensor([0]))) / 2
    torch.testing.assert_close(loss, expected)
