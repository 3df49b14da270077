import math

import pytest
import torch

from ancis_fast.boxes import box_iou, decode, encode, priors_to_boxes
from ancis_fast.models.priors import feature_map_sizes, make_priors


def test_prior_count_at_512():
    priors = make_priors(512, 512)
    assert priors.shape == (64 * 64 * 4 + 32 * 32 * 6 + 16 * 16 * 6 + 8 * 8 * 6, 4) == (24448, 4)
    assert priors.dtype == torch.float32


def test_first_rows_hand_computed():
    priors = make_priors(512, 512)
    smin, smax = 0.04 * 512, 0.10 * 512
    expected = [
        [4, 4, smin, smin],
        [4, 4, math.sqrt(smin * smax), math.sqrt(smin * smax)],
        [4, 4, smin / math.sqrt(2), smin * math.sqrt(2)],
        [4, 4, smin * math.sqrt(2), smin / math.sqrt(2)],
        [4, 12, smin, smin],  # next cell of the same row: cx advances by the step 8
    ]
    torch.testing.assert_close(priors[:5], torch.tensor(expected, dtype=torch.float32))


def test_last_rows_hand_computed():
    priors = make_priors(512, 512)
    smin = 0.42 * 512  # level c6: step 64, map 8x8, last cell (7, 7)
    centre = 7.5 * 64
    expected = [
        [centre, centre, smin / math.sqrt(3), smin * math.sqrt(3)],
        [centre, centre, smin * math.sqrt(3), smin / math.sqrt(3)],
    ]
    torch.testing.assert_close(priors[-2:], torch.tensor(expected, dtype=torch.float32))


def test_scales_use_height_for_width_too():
    """(quirk) on a wide input the prior sizes follow H alone."""
    priors = make_priors(256, 1024)
    assert priors[0, 2].item() == pytest.approx(0.04 * 256)
    assert priors[0, 3].item() == pytest.approx(0.04 * 256)


def test_ceil_rule_for_odd_sizes():
    assert feature_map_sizes(100, 130) == [(13, 17), (7, 9), (4, 5), (2, 3)]
    assert make_priors(100, 130).shape[0] == 13 * 17 * 4 + (7 * 9 + 4 * 5 + 2 * 3) * 6


def test_priors_are_cached():
    assert make_priors(512, 512) is make_priors(512, 512)


def test_decode_hand_computed():
    priors = torch.tensor([[100.0, 50.0, 20.0, 40.0]])
    locs = torch.tensor([[[1.0, -2.0, 0.0, math.log(2) / 0.2]]])
    # centre: 100 + 1*0.1*20 = 102, 50 - 2*0.1*40 = 42; size: h = 20, w = 40*2 = 80
    expected = torch.tensor([[[92.0, 2.0, 112.0, 82.0]]])
    torch.testing.assert_close(decode(locs, priors), expected)


def test_encode_inverts_decode():
    torch.manual_seed(0)
    priors = make_priors(128, 128)
    locs = torch.randn(priors.shape[0], 4) * 0.5
    torch.testing.assert_close(encode(decode(locs, priors), priors), locs, atol=1e-4, rtol=1e-4)


def test_zero_offsets_decode_to_prior_boxes():
    priors = make_priors(64, 64)
    torch.testing.assert_close(decode(torch.zeros(1, len(priors), 4), priors)[0], priors_to_boxes(priors))


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0]]))


def test_scale_height_gives_the_full_input_priors_on_a_crop():
    """Priors of a 256 crop with scale_height=512 equal the 512 priors of the same cells."""
    full, crop = make_priors(512, 512), make_priors(256, 256, scale_height=512)
    full_levels = torch.split(full, [64 * 64 * 4, 32 * 32 * 6, 16 * 16 * 6, 8 * 8 * 6])
    crop_levels = torch.split(crop, [32 * 32 * 4, 16 * 16 * 6, 8 * 8 * 6, 4 * 4 * 6])
    for f, c, (n, a) in zip(full_levels, crop_levels, [(64, 4), (32, 6), (16, 6), (8, 6)]):
        top_left = f.reshape(n, n, a, 4)[: n // 2, : n // 2].reshape(-1, 4)
        torch.testing.assert_close(c, top_left)
