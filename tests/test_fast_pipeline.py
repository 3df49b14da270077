"""The fast pipeline against the reference path (seeded random weights)."""
import warnings

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
    return (Predictor.from_models(*models, backend="reference", config=config),
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
        return BUCKETS[int(bucket_index(torch.tensor([length]), torch.tensor(BUCKETS)))]

    assert bucket_size(1) == 8 and bucket_size(24) == 24 and bucket_size(25) == 28 and bucket_size(10_000) == 512
    assert [level_shape(24, i) for i in range(5)] == [24, 12, 6, 3, 3]
    assert default_buckets(torch.device("cpu")) == BUCKETS and default_buckets(torch.device("cuda")) == GPU_BUCKETS
    assert PredictorConfig(mask_buckets=(16, 64)).mask_buckets == (16, 64)
    for bad in ((), (32, 16), (16, 16), (2, 8), (8.5,)):
        with pytest.raises(ValueError, match="mask buckets"):
            PredictorConfig(mask_buckets=bad)


def test_decoder_steps_batch_boxes_across_level0_sizes(soft_models):
    """Exact mode: boxes whose level-0 crops differ but whose deeper crops match share the
    deep decoder steps; each box's mask equals decoding it alone."""
    from ancis_fast.pipeline.fast import Detections, FastPipeline

    pipeline = FastPipeline(*soft_models, SIZE, mode="exact")
    calls = []
    decode_stage = pipeline.segmenter.decode_stage
    pipeline.segmenter.decode_stage = lambda level, pre, skip: calls.append((level, pre.shape[0])) or decode_stage(
        level, pre, skip)
    # level-0 sizes 32..38 px: 7 level-0 crop shapes, fewer on levels 3 and 4
    sides = torch.tensor([32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0])
    boxes = torch.stack([torch.full_like(sides, 40.0), torch.full_like(sides, 40.0), 40 + sides, 40 + sides], 1)
    det = Detections(boxes, torch.ones(7), torch.ones(7, dtype=torch.long), torch.zeros(7, dtype=torch.long))
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(x)
        probs, sizes = pipeline.segment(x, features, det)
        level3 = [n for level, n in calls if level == 3]
        level0 = [n for level, n in calls if level == 0]
        assert sum(level3) == sum(level0) == 7
        assert len(level0) == len(set(sizes[:, 0].tolist())) == 7 and len(level3) < 7
        for k in range(7):
            alone, alone_sizes = pipeline.segment(x, features, det.index(torch.tensor([k])))
            h, w = alone_sizes[0].tolist()
            assert sizes[k].tolist() == [h, w]
            torch.testing.assert_close(probs[k, :h, :w], alone[0, :h, :w], atol=1e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mask_stage_synchronises_once_on_a_gpu(soft_models):
    """The decoder's groups are planned from one device-to-host copy; nothing else waits."""
    from ancis_fast.pipeline.fast import Detections, FastPipeline

    pipeline = FastPipeline(*soft_models, SIZE).cuda()
    sides = torch.tensor([12.0, 20.0, 33.0, 34.0, 50.0], device="cuda")
    boxes = torch.stack([torch.full_like(sides, 30.0), torch.full_like(sides, 20.0), 30 + sides, 20 + sides], 1)
    ones = torch.ones(5, dtype=torch.long, device="cuda")
    det = Detections(boxes, ones.float(), ones, ones * 0)
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(torch.rand(1, 3, *SIZE, device="cuda"))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                probs, sizes = pipeline.segment(x, features, det)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, syncs
    assert probs.shape[0] == 5 and bool((sizes > 0).all())


def test_core_buffers_live_with_the_priors():
    """FastCore.core() (what export scripts) builds its buffers where the pipeline's priors are."""
    from ancis_fast.pipeline.fast import FastCore

    priors = torch.zeros(10, 4, device="meta")
    core = FastCore(torch.nn.Identity(), torch.nn.Identity(), priors, SIZE)
    for module in (core, core.core()):
        assert module.bucket_lengths.device == module.bucket_edges.device == priors.device
