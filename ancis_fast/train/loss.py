"""Training losses: the SSD MultiBox loss of the detector and the mask BCE of the
segmenter (spec §7)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def hard_negative_mask(background_loss: Tensor, positive: Tensor, neg_pos_ratio: int = 3) -> Tensor:
    """Pick the hardest negatives of each image.

    Args:
        background_loss: ``[B,P]`` per-prior cross-entropy against the background class.
        positive: ``[B,P]`` bool, priors matched to a cell.
    Returns:
        ``[B,P]`` bool: per image the ``min(neg_pos_ratio * #pos, #neg)`` negatives with
        the largest loss (ties: lower prior index first).
    """
    loss = background_loss.detach().masked_fill(positive, -float("inf"))
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = torch.minimum(neg_pos_ratio * num_pos, positive.shape[1] - num_pos)
    order = torch.sort(loss, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank < num_neg


def multibox_loss(locs: Tensor, conf: Tensor, loc_targets: Tensor, labels: Tensor,
                  neg_pos_ratio: int = 3) -> Tuple[Tensor, Tensor]:
    """SSD MultiBox loss.

    Args:
        locs: ``[B,P,4]`` predicted offsets. conf: ``[B,P,C]`` class logits.
        loc_targets: ``[B,P,4]`` encoded targets. labels: ``[B,P]`` int64 (0 = background).
    Returns:
        ``(loc_loss, conf_loss)``: smooth-L1 summed over positives, and cross-entropy
        summed over positives + mined negatives, each divided by the number of positives
        in the batch (at least 1).
    """
    positive = labels > 0
    num_pos = positive.sum().clamp(min=1).to(locs.dtype)
    loc_loss = F.smooth_l1_loss(locs[positive], loc_targets[positive], reduction="sum")
    log_probs = F.log_softmax(conf.float(), dim=-1)
    selected = positive | hard_negative_mask(-log_probs[..., 0], positive, neg_pos_ratio)
    conf_loss = F.nll_loss(log_probs[selected], labels[selected], reduction="sum")
    return loc_loss / num_pos, conf_loss / num_pos


def box_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-box mean binary cross-entropy: ``logits``/``targets`` ``[K,1,h,w]`` -> ``[K]``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(dim=1)


def per_image_mean(per_box: Tensor, image_index: Tensor, num_images: int) -> Tensor:
    """Segmenter reduction (spec §7): mean of ``per_box [K]`` within each image
    (``image_index [K]``), then over the images that have boxes (0 if none has)."""
    sums = per_box.new_zeros(num_images).index_add(0, image_index, per_box)
    counts = per_box.new_zeros(num_images).index_add(0, image_index, torch.ones_like(per_box))
    has = counts > 0
    if not bool(has.any()):
        return per_box.sum() * 0.0
    return (sums[has] / counts[has]).mean()
