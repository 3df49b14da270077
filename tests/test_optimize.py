"""Inference rewrites give the reference network's outputs."""
import pytest
import torch

from ancis_fast.backends.optimize import fold_batchnorm, fuse_attention, optimize_for_inference
from ancis_fast.models import build_detector
from ancis_fast.models.attention import FusedSelfAttention, SelfAttention, blocked_attention


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = build_detector("resnet50").eval()
    with torch.no_grad():  # non-trivial BN statistics, so that folding is really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


def _outputs(model, x):
    with torch.no_grad():
        locs, conf, feats = model(x)
    return [locs, conf] + list(feats)


@pytest.mark.parametrize("size", [(5, 7), (40, 41)])  # 35 positions: one block; 1640: two blocks of queries
def test_fused_attention_equals_reference(size):
    torch.manual_seed(1)
    att = SelfAttention(64)
    x = torch.randn(2, 64, *size)
    with torch.no_grad():
        torch.testing.assert_close(FusedSelfAttention(att)(x), att(x), atol=1e-5, rtol=1e-5)


def test_blocked_attention_equals_unblocked_for_any_block():
    g = torch.Generator().manual_seed(3)
    query, key, value = torch.randn(2, 300, 8, generator=g), torch.randn(2, 300, 8, generator=g), torch.randn(2, 300, 5, generator=g)
    expected = torch.softmax(query @ key.transpose(1, 2), dim=-1) @ value
    for block in (1, 7, 128, 300, 1000):
        torch.testing.assert_close(blocked_attention(query, key, value, block), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_optimized_detector_matches_reference(detector, channels_last):
    fast = optimize_for_inference(detector, channels_last=channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert not any(isinstance(m, SelfAttention) for m in fast.modules())
    x = torch.rand(2, 3, 128, 128)
    for ref, got in zip(_outputs(detector, x), _outputs(fast, x)):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_rewrites_leave_the_reference_untouched(detector):
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    fold_batchnorm(detector)
    fuse_attention(detector)
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    assert isinstance(detector.att_c3, SelfAttention)
