"""Shared fixtures: seeded random-weight models (no trained model is needed to test the
plumbing) and small synthetic images."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import ancis_fast.predictor as predictor_module
from ancis_fast.models import build_detector, build_segmenter


def random_models(backbone: str = "resnet50", seed: int = 0, mask_bias: float = 2.0):
    """Seeded random detector + segmenter in eval mode.

    ``mask_bias`` shifts the segmenter's output logit so that random weights give
    non-empty masks (a zero-mean head would sit right at the 0.5 threshold).
    """
    torch.manual_seed(seed)
    detector = build_detector(backbone).eval()
    segmenter = build_segmenter(backbone).eval()
    with torch.no_grad():
        segmenter.layer_head[2].bias.fill_(mask_bias)
    return detector, segmenter


def cli_weights(folder) -> list:
    """Seeded random ResNet-18 weights saved in ``folder``: the CLI arguments that load them
    (128 px input, no progress bars)."""
    detector, segmenter = random_models("resnet18")
    torch.save(detector.state_dict(), folder / "det.pth")
    torch.save(segmenter.state_dict(), folder / "seg.pth")
    return ["--weights-det", str(folder / "det.pth"), "--weights-seg", str(folder / "seg.pth"),
            "--backbone", "resnet18", "--input-size", "128", "--quiet"]


_REAL_AUTO_ZOOM, _REAL_AUTO_SCALE = predictor_module.auto_zoom, predictor_module.auto_scale

#: the DSB 2018 images (label layout): ../shared beside the clone, as on CI; the
#: ANCIS_DSB2018 environment variable points elsewhere (e.g. from a git worktree)
DSB2018 = Path(os.environ.get("ANCIS_DSB2018", Path(__file__).resolve().parents[1] / ".." / "shared/data/dsb2018"))
needs_dsb2018 = pytest.mark.skipif(not DSB2018.is_dir(), reason=f"the DSB 2018 images are not at {DSB2018} "
                                                                "(../shared/data/dsb2018; or set ANCIS_DSB2018)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Random weights make hundreds of junk detections a few px apart, which zoom="auto"
    would take for a crowd (or for nuclei of the wrong size) and segment again. Tests not
    marked ``auto_zoom`` run with both rules answering "keep the first pass" (so each
    measures what it names at the cost of one pass);
    tests/test_zoom.py covers the rule and its path. Set before any fixture, module-scoped
    ones included, is made."""
    marked = item.get_closest_marker("auto_zoom") is not None
    predictor_module.auto_zoom = _REAL_AUTO_ZOOM if marked else (lambda *args: 1.0)
    predictor_module.auto_scale = _REAL_AUTO_SCALE if marked else (lambda *args: None)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): on a busy 2-core machine, OpenMP threads spinning against other
    processes can make a training step 20x slower; one thread keeps such tests predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def _shared_models():
    return random_models()


@pytest.fixture(scope="module")
def models():
    """The seeded random-weight detector and segmenter, built once for the whole test run
    (building them takes seconds; tests only read them)."""
    return _shared_models()


def blob_image(height: int = 160, width: int = 200, cells: int = 12, seed: int = 0) -> np.ndarray:
    """8-bit BGR image of bright disks on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = rng.normal(20, 5, (height, width))
    for _ in range(cells):
        cy, cx, r = rng.uniform(10, height - 10), rng.uniform(10, width - 10), rng.uniform(4, 10)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += rng.uniform(80, 200)
    gray = np.clip(image, 0, 255).astype(np.uint8)
    return np.stack([gray, (gray * 0.8).astype(np.uint8), gray // 2], axis=2)


@pytest.fixture
def bgr_image() -> np.ndarray:
    return blob_image()


def matched_detections(got, want, atol: float = 1e-3):
    """``want`` reordered to match ``got`` row for row, after checking that both hold the same
    detections: equal counts, scores equal rank by rank within ``atol`` and boxes equal as a
    set within ``atol``. Rows are not compared in order because two detections whose scores
    tie up to float rounding may swap places when the batch around them changes (another
    batch size runs other convolution kernels, rounding differently); the rank-by-rank score
    check still fails when anything but such near-ties moves."""
    assert len(got) == len(want), (len(got), len(want))
    np.testing.assert_allclose(got.scores, want.scores, atol=atol)
    if not len(got):
        return want
    distance = np.abs(got.boxes[:, None, :] - want.boxes[None, :, :]).max(axis=2)
    order = distance.argmin(axis=1)
    assert len(set(order.tolist())) == len(order), "two detections matched the same one"
    np.testing.assert_allclose(got.boxes, want.boxes[order], atol=atol)
    np.testing.assert_allclose(got.scores, want.scores[order], atol=atol)
    return want[order]


def paired_mask_ious(a, b) -> np.ndarray:
    """Mask IoU of instance ``i`` of ``a`` with instance ``i`` of ``b`` (the same detections
    in the same order), skipping pairs where both masks are empty."""
    ious = []
    for i in range(len(a)):
        ma, mb = a.mask_patches.mask(i), b.mask_patches.mask(i)
        union = (ma | mb).sum()
        if union:
            ious.append((ma & mb).sum() / union)
    return np.array(ious)
