"""Network definitions: shapes, state-dict names, attention maths."""
import pytest
import torch

from ancis_fast.models import build_detector, build_segmenter, make_priors
from ancis_fast.models.attention import SelfAttention


def test_self_attention_equals_naive_loop():
    torch.manual_seed(0)
    att = SelfAttention(16)
    x = torch.randn(2, 16, 3, 4)
    with torch.no_grad():
        out = att(x)
        f = att.conv1(x).flatten(2)  # [B, C/8, N]
        g = att.conv2(x).flatten(2)
        v = att.conv3(x).flatten(2)  # [B, C, N]
    n = 12
    expected = torch.empty(2, 16, n)
    for b in range(2):
        for i in range(n):
            logits = torch.tensor([sum(f[b, k, i] * g[b, k, j] for k in range(2)) for j in range(n)])
            weights = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()  # no 1/sqrt(d)
            expected[b, :, i] = sum(weights[j] * v[b, :, j] for j in range(n))
    torch.testing.assert_close(out, expected.reshape(2, 16, 3, 4) + x, atol=1e-5, rtol=1e-5)


def test_detector_outputs_and_features():
    detector = build_detector().eval()
    with torch.no_grad():
        locs, conf, feats = detector(torch.rand(2, 3, 128, 192))
    priors = make_priors(128, 192)
    assert locs.shape == (2, len(priors), 4) and conf.shape == (2, len(priors), 2)
    assert [tuple(f.shape[1:]) for f in feats] == [(3, 128, 192), (64, 64, 96), (256, 32, 48), (512, 16, 24), (1024, 8, 12)]


def test_detector_sizes_not_divisible_by_64_follow_the_ceil_rule():
    detector = build_detector("resnet18").eval()
    with torch.no_grad():
        locs, _, _ = detector(torch.rand(1, 3, 100, 130))
    assert locs.shape[1] == make_priors(100, 130).shape[0]


def test_release_state_dict_names():
    keys = set(build_detector().state_dict())
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer3.5.conv3.weight",
                "new_layer1.0.bias", "new_layer1.4.weight", "new_layer2.3.weight", "fusion_c3.bias",
                "fusion_end.0.running_mean", "fusion_end.1.weight", "att_c3.conv1.weight", "att_c6.conv3.weight",
                "conf_c3.weight", "locs_c6.bias"]:
        assert key in keys, key
    assert not any(k.startswith("layer4") for k in keys)
    assert build_detector().state_dict()["conf_c3.weight"].shape == (8, 512, 3, 3)
    assert build_detector().state_dict()["locs_c4.weight"].shape == (24, 1024, 3, 3)
    seg = build_segmenter().state_dict()
    assert seg["layer_att.3.conv1.weight"].shape == (512, 1024, 1, 1)
    assert seg["layer_up_concat.2.cat.0.weight"].shape == (256, 512, 1, 1)
    assert seg["layer_head.2.weight"].shape == (1, 64, 3, 3)


@pytest.mark.parametrize("backbone, layer3_blocks", [("resnet101", 23), ("resnet152", 36)])
def test_deeper_backbones(backbone, layer3_blocks):
    keys = build_detector(backbone).state_dict()
    assert f"layer3.{layer3_blocks - 1}.conv3.weight" in keys and f"layer3.{layer3_blocks}.conv1.weight" not in keys


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
def test_segmenter_decodes_any_number_of_levels(levels):
    segmenter = build_segmenter().eval()
    sizes = [(40, 36), (20, 18), (10, 9), (5, 5), (3, 3)]
    crops = [torch.rand(2, c, h, w) for c, (h, w) in zip((64, 64, 256, 512, 1024), sizes)][:levels]
    with torch.no_grad():
        prob = segmenter(crops)
    assert prob.shape == (2, 1, 40, 36)
    assert ((prob >= 0) & (prob <= 1)).all()


def test_bad_backbone_and_classes():
    with pytest.raises(ValueError, match="resnet50"):
        build_detector("vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(num_classes=1)
