"""Prior matching, the MultiBox loss with hard-negative mining, schedules."""
import math

import pytest
import torch

from ancis_fast.boxes import decode, encode, priors_to_boxes
from ancis_fast.models import make_priors
from ancis_fast.train.loss import box_bce, hard_negative_mask, multibox_loss, per_image_mean
from ancis_fast.train.matching import match_batch, match_priors
from ancis_fast.train.optim import DETECTOR_RECIPES, SEGMENTER_RECIPES, Recipe, lr_factor

PRIORS = make_priors(128, 128)


def test_box_equal_to_a_prior_matches_it_and_round_trips():
    box = priors_to_boxes(PRIORS[100:101])
    targets, labels = match_priors(box, PRIORS)
    assert labels[100] == 1
    assert torch.allclose(targets[100], torch.zeros(4), atol=1e-5)
    positives = labels > 0
    decoded = decode(targets[positives], PRIORS[positives])
    assert torch.allclose(decoded, box.expand_as(decoded), atol=1e-3)


def test_encode_decode_round_trip_for_random_boxes():
    g = torch.Generator().manual_seed(0)
    top_left = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([top_left, top_left + 2 + torch.rand(50, 2, generator=g) * 40], dim=1)
    priors = PRIORS[torch.randint(0, len(PRIORS), (50,), generator=g)]
    assert torch.allclose(decode(encode(boxes, priors), priors), boxes, atol=1e-3)


def test_every_box_gets_its_best_prior_even_with_low_iou():
    tiny = torch.tensor([[60.0, 60.0, 62.0, 62.0]])  # far smaller than any prior: IoU << 0.5
    _, labels = match_priors(tiny, PRIORS)
    assert labels.sum() == 1


def test_threshold_and_background():
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    targets, labels = match_priors(box, PRIORS, iou_thresh=0.5)
    from ancis_fast.boxes import box_iou

    iou = box_iou(box, priors_to_boxes(PRIORS))[0]
    assert torch.equal(labels > 0, (iou >= 0.5) | (torch.arange(len(PRIORS)) == iou.argmax()))
    assert torch.all(targets[labels == 0] == 0)


def test_shared_best_prior_goes_to_the_later_box():
    box = priors_to_boxes(PRIORS[7:8])
    two = torch.cat([box, box + 0.01])
    targets, labels = match_priors(two, PRIORS)
    assert labels[7] == 1
    assert torch.allclose(decode(targets[7:8], PRIORS[7:8]), two[1:], atol=1e-3)


def test_no_boxes_means_all_background():
    targets, labels = match_batch([torch.zeros(0, 4), torch.zeros(0, 4)], PRIORS)
    assert targets.shape == (2, len(PRIORS), 4) and labels.sum() == 0


@pytest.mark.parametrize("num_pos", [0, 1, 5, 40, 80])
def test_hard_negative_counts_and_choice(num_pos):
    g = torch.Generator().manual_seed(num_pos)
    loss = torch.rand(1, 100, generator=g)
    positive = torch.zeros(1, 100, dtype=torch.bool)
    positive[0, torch.randperm(100, generator=g)[:num_pos]] = True
    chosen = hard_negative_mask(loss, positive, 3)
    expected = min(3 * num_pos, 100 - num_pos)
    assert int(chosen.sum()) == expected
    assert not (chosen & positive).any()
    if 0 < expected < 100 - num_pos:
        assert loss[chosen].min() >= loss[~chosen & ~positive].max()


def test_hard_negatives_are_counted_per_image():
    loss = torch.rand(2, 50)
    positive = torch.zeros(2, 50, dtype=torch.bool)
    positive[0, :2] = True
    positive[1, :10] = True
    assert hard_negative_mask(loss, positive).sum(dim=1).tolist() == [6, 30]


def test_multibox_loss_hand_case():
    locs = torch.zeros(1, 5, 4)
    conf = torch.zeros(1, 5, 2)  # CE = log 2 for every prior
    loc_targets = torch.zeros(1, 5, 4)
    loc_targets[0, 0] = torch.tensor([1.0, 0.0, 0.0, 3.0])  # smooth-L1: 0.5 + 2.5
    labels = torch.tensor([[1, 0, 0, 0, 0]])
    loc_loss, conf_loss = multibox_loss(locs, conf, loc_targets, labels)
    assert loc_loss.item() == pytest.approx(3.0)
    assert conf_loss.item() == pytest.approx(4 * math.log(2))  # 1 positive + 3 negatives, / 1 positive


def test_multibox_loss_divides_by_all_positives_of_the_batch():
    conf = torch.zeros(2, 20, 2)
    labels = torch.zeros(2, 20, dtype=torch.long)
    labels[0, 0] = labels[1, :3] = 1
    _, conf_loss = multibox_loss(torch.zeros(2, 20, 4), conf, torch.zeros(2, 20, 4), labels)
    assert conf_loss.item() == pytest.approx((4 + 12) * math.log(2) / 4)


def test_mask_loss_reduction_per_box_then_image():
    logits = torch.zeros(3, 1, 2, 2)
    targets = torch.zeros(3, 1, 2, 2)
    per_box = box_bce(logits, targets)
    assert torch.allclose(per_box, torch.full((3,), math.log(2)))
    loss = per_image_mean(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 0, 2]), 3)
    assert loss.item() == pytest.approx((2.0 + 10.0) / 2)  # image 1 has no box


def test_schedules():
    release = DETECTOR_RECIPES["release"].with_overrides(epochs=10)
    assert lr_factor(release, 0, 5) == 1.0 and lr_factor(release, 44, 5) == 1.0 and lr_factor(release, 45, 5) == 0.1
    seg = SEGMENTER_RECIPES["release"]
    assert lr_factor(seg, 7, 3) == pytest.approx(0.98**2)
    fast = Recipe("t", "adamw", 1e-3, epochs=1, batch_size=1, schedule="cosine", warmup_steps=10)
    assert lr_factor(fast, 0, 100) == pytest.approx(0.01, rel=0.1)
    assert lr_factor(fast, 10, 100) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lr_factor(fast, 100, 100) == pytest.approx(0.01)
    # a time limit that is further along than the steps drives the schedule
    assert lr_factor(fast, 10, 100, time_progress=0.5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(fast, 50, 100, time_progress=0.1) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(fast, 10, 100, time_progress=1.0) == pytest.approx(0.01)
    assert lr_factor(release, 0, 5, time_progress=0.9) == 0.1 and lr_factor(release, 0, 5, time_progress=0.89) == 1.0
    with pytest.raises(ValueError, match="optimizer"):
        Recipe("x", "rmsprop", 1e-3, 1, 1, "step")
