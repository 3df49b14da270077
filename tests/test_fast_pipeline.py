"""The fast pipeline against the reference path (seeded random weights)."""
import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.pipeline.fast import BUCKETS, GPU_BUCKETS, bucket_index, default_buckets, level_shape
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, paired_mask_ious, random_models

SIZE = (128, 128)


@pytest.fixture(scope="module")
def soft_models():
    """Random weights whose mask probabilities straddle the threshold."""
    return random_models(seed=2, mask_bias=0.3)


def _predictors(models, mode, buckets=None):
    # the release's detection limits: without them random weights give hundreds of cells per
    # image, whose near-tied scores (1e-7 apart) may swap order between the two paths
    config = PredictorConfig(input_size=SIZE, mode=mode, mask_buckets=buckets, max_candidates=200, max_detections=500)
    return (Predictor.from_models(*models, config=config),
            Predictor.from_models(*models, backend="eager", config=config))


@pytest.mark.parametrize("mode, min_iou, buckets", [("exact", 0.99, None), ("fast", 0.8, None),
                                                    ("fast", 0.8, GPU_BUCKETS)])
def test_eager_agrees_with_reference(soft_models, mode, min_iou, buckets):
    reference, eager = _predictors(soft_models, mode, buckets)
    for seed in range(2):
        image = blob_image(seed=seed)
        ref, got = reference.predict(image), eager.predict(image)
        assert len(ref) == len(got) > 0
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3)  # original pixels, 1e-4 in network units
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
        ious = paired_mask_ious(ref, got)
        assert ious.mean() >= min_iou, (mode, ious.mean())
        if mode == "exact":
            assert (got.areas == 0).tolist() == (ref.areas == 0).tolist()  # same boxes without masks


def test_exact_mode_masks_are_identical_for_most_cells(soft_models):
    reference, eager = _predictors(soft_models, "exact")
    image = blob_image(seed=7)
    ious = paired_mask_ious(reference.predict(image), eager.predict(image))
    assert (ious == 1.0).mean() >= 0.9


def test_predict_batch_batches_and_matches_single(soft_models):
    _, eager = _predictors(soft_models, "fast")
    images = [blob_image(seed=s) for s in range(3)] + [blob_image(100, 90, seed=4)]
    batched = eager.predict_batch(images, batch_size=3)
    for image, got in zip(images, batched):
        single = eager.predict(image)
        np.testing.assert_allclose(got.boxes, single.boxes, atol=1e-3)
        assert got.image_size == image.shape[:2]


def test_torchscript_backend_equals_eager(soft_models):
    config = PredictorConfig(input_size=SIZE, mode="exact")
    eager = Predictor.from_models(*soft_models, backend="eager", config=config)
    scripted = Predictor.from_models(*soft_models, backend="torchscript", config=config)
    assert isinstance(scripted.pipeline.detector, torch.jit.ScriptModule)
    image = blob_image(seed=3)
    a, b = eager.predict(image), scripted.predict(image)
    np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
    assert paired_mask_ious(a, b).mean() >= 0.999


def test_buckets():
    def bucket_size(length):
        return BUCKETS[int(bucket_index(torch.tensor([length]), list(BUCKETS)))]

    assert bucket_size(1) == 8 and bucket_size(24) == 24 and bucket_size(25) == 28 and bucket_size(10_000) == 512
    assert [level_shape(24, i) for i in range(5)] == [24, 12, 6, 3, 3]
    assert default_buckets(torch.device("cpu")) == BUCKETS and default_buckets(torch.device("cuda")) == GPU_BUCKETS
    assert PredictorConfig(mask_buckets=(16, 64)).mask_buckets == (16, 64)
    for bad in ((), (32, 16), (16, 16), (2, 8), (8.5,)):
        with pytest.raises(ValueError, match="mask buckets"):
            PredictorConfig(mask_buckets=bad)
