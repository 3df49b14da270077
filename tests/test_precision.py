"""``precision=``: bf16 on the CPU against fp32, and the refused combinations."""
import copy
from typing import List, Tuple

import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.backends.precision import CastDetector, CastSegmenter, resolve_precision
from ancis_fast.backends.torchscript import script
from ancis_fast.models.segmenter import Segmenter
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, random_models

SIZE = (128, 128)


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of (y1, x1, y2, x2) boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module")
def soft_models():
    """Random weights whose mask probabilities straddle the threshold (the hard case)."""
    return random_models(seed=2, mask_bias=0.3)


@pytest.mark.slow  # bf16 convolutions are ~30x slower than fp32 on CPUs without bf16 units
def test_bf16_on_cpu_agrees_with_fp32(soft_models):
    """bf16 keeps 8 significant bits (~2-3 decimal digits): a random model's scores are all
    within ~1e-3 of each other, so which near-tied candidates make the top-200 / survive
    NMS can change; the detections that both keep must be the same boxes (IoU >= 0.9) with
    scores within 1e-2 (~1% relative) and masks of mean IoU >= 0.9 (pixels at p ~ 0.5 flip)."""
    config = dict(input_size=SIZE, mode="exact")
    fp32 = Predictor.from_models(*soft_models, backend="eager", config=PredictorConfig(**config))
    bf16 = Predictor.from_models(*soft_models, backend="eager", config=PredictorConfig(**config, precision="bf16"))
    assert isinstance(bf16.pipeline.detector, CastDetector) and isinstance(bf16.pipeline.segmenter, CastSegmenter)
    assert next(bf16.pipeline.detector.parameters()).dtype == torch.bfloat16
    image = blob_image(seed=0)
    a, b = fp32.predict(image), bf16.predict(image)
    assert len(a) > 20 and abs(len(a) - len(b)) <= 0.05 * len(a)
    ious = box_ious(a.boxes, b.boxes)
    matched = [(i, int(ious[i].argmax())) for i in range(len(a)) if ious[i].max() >= 0.9]
    assert len(matched) >= 0.9 * len(a)
    np.testing.assert_allclose([b.scores[j] for _, j in matched], [a.scores[i] for i, _ in matched], atol=1e-2)
    masks = [mask_iou(a.mask_patches.mask(i), b.mask_patches.mask(j)) for i, j in matched]
    assert np.mean(masks) >= 0.9, np.mean(masks)


def test_precision_is_validated(models):
    with pytest.raises(ValueError, match="precision='fp8'"):
        PredictorConfig(precision="fp8")
    with pytest.raises(ValueError, match=r"device='cpu'.*bf16.*cuda"):
        Predictor.from_models(*models, backend="eager", config=PredictorConfig(input_size=SIZE, precision="fp16"))
    with pytest.raises(ValueError, match="reference path is fp32 only"):
        Predictor.from_models(*models, backend="reference", config=PredictorConfig(input_size=SIZE, precision="bf16"))
    assert resolve_precision("fp16", torch.device("cuda")) == torch.float16  # allowed on a GPU


class _TinyDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        c1 = self.conv(x)
        return c1.flatten(2)[:, :4].transpose(1, 2), c1.flatten(2)[:, 4:6].transpose(1, 2), [x, c1]


def test_cast_wrappers_script_and_keep_fp32_interfaces():
    """The wrappers are TorchScript-compatible (the torchscript backend scripts them), run
    the network in bf16 and hand fp32 to the fp32 parts of the pipeline."""
    torch.manual_seed(0)
    detector, segmenter = _TinyDetector().eval(), Segmenter((64, 16, 16, 16, 16)).eval()
    reference_det, reference_seg = copy.deepcopy(detector), copy.deepcopy(segmenter)
    cast_det = script(CastDetector(detector, torch.bfloat16))
    cast_seg = script(CastSegmenter(segmenter, torch.bfloat16))
    x = torch.rand(2, 3, 16, 16)
    locs, conf, features = cast_det(x)
    assert locs.dtype == conf.dtype == features[1].dtype == torch.float32 and torch.equal(features[0], x)
    torch.testing.assert_close(locs, reference_det(x)[0], atol=0.05, rtol=0.02)  # bf16: 8 significant bits
    crops = [torch.rand(3, 64, 8, 8), torch.rand(3, 16, 4, 4)]
    probs = cast_seg(crops)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, reference_seg(crops), atol=0.02, rtol=0.02)
    c0 = cast_seg.encode_c0(torch.rand(2, 3, 12, 12), torch.ones(2, 1, 12, 12))
    assert c0.dtype == torch.float32 and c0.shape == (2, 64, 12, 12)


def test_torchscript_backend_scripts_the_bf16_wrappers(models):
    config = PredictorConfig(input_size=SIZE, precision="bf16")
    scripted = Predictor.from_models(*models, backend="torchscript", config=config)
    assert isinstance(scripted.pipeline.detector, torch.jit.ScriptModule)
    assert isinstance(scripted.pipeline.segmenter, torch.jit.ScriptModule)


def test_cli_precision_flag(tmp_path):
    from ancis_fast.cli import make_parser

    args = make_parser().parse_args(["predict", "x.png", "--out", str(tmp_path), "--precision", "bf16",
                                     "--backend", "compile"])
    assert args.precision == "bf16" and args.backend == "compile"
    assert make_parser().parse_args(["predict", "x.png", "--out", str(tmp_path), "--precision", "int8"]).precision == "int8"
    with pytest.raises(SystemExit):
        make_parser().parse_args(["predict", "x.png", "--out", str(tmp_path), "--precision", "int4"])
