"""The fast pipeline against the reference path (seeded random weights)."""
import warnings

import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from torch.utils._python_dispatch import TorchDispatchMode

from ancis_fast.config import CROP_SIZES
from ancis_fast.pipeline.fast import (SMALLEST_BOX_BUDGET, FastPipeline, PaddedDetections, box_budget,
                                      level_shape, size_classes)
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, matched_detections, paired_mask_ious, random_models

SIZE = (128, 128)


@pytest.fixture(scope="module")
def soft_models():
    """Random weights whose mask probabilities straddle the threshold."""
    return random_models(seed=2, mask_bias=0.3)


def _predictors(models, mode, crop_sizes=CROP_SIZES):
    # the release's detection limits: without them random weights give hundreds of cells per
    # image, whose near-tied scores (1e-7 apart) may swap order between the two paths
    config = PredictorConfig(input_size=SIZE, mode=mode, crop_sizes=crop_sizes, max_candidates=200,
                             max_detections=500)
    return (Predictor.from_models(*models, backend="reference", config=config),
            Predictor.from_models(*models, backend="eager", config=config))


@pytest.mark.parametrize("mode, min_iou, crop_sizes", [("exact", 0.99, CROP_SIZES), ("fast", 0.8, CROP_SIZES),
                                                       ("fast", 0.8, (16, 64))])
def test_eager_agrees_with_reference(soft_models, mode, min_iou, crop_sizes):
    reference, eager = _predictors(soft_models, mode, crop_sizes)
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
        matched_detections(got, eager.predict(image), atol=1e-3)
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


def test_crop_shapes_and_budgets():
    """Per axis the crop size nearest (log scale) the level-0 length; budgets from the ladder."""
    sizes = (8, 12, 16, 24, 32)
    edges = (torch.tensor(sizes[:-1], dtype=torch.float64) * torch.tensor(sizes[1:])).sqrt().float()

    def shape(h, w):
        index = int(size_classes(torch.tensor([[0, 0, h - 1, w - 1]]), edges))
        return sizes[index // len(sizes)], sizes[index % len(sizes)]

    assert shape(8, 8) == (8, 8) and shape(9, 9) == (8, 8) and shape(10, 11) == (12, 12)
    assert shape(14, 40) == (16, 32) and shape(1, 500) == (8, 32)
    assert [level_shape(24, i) for i in range(5)] == [24, 12, 6, 3, 3]
    assert box_budget(0, 500) == SMALLEST_BOX_BUDGET and box_budget(9, 500) == 16 and box_budget(300, 500) == 500 and box_budget(5000, 9000) == 9000
    assert PredictorConfig(crop_sizes=[16, 64]).crop_sizes == (16, 64)
    for bad in ((), (32, 16), (16, 16), (2, 8), (8.5,)):
        with pytest.raises(ValueError, match="crop_sizes"):
            PredictorConfig(crop_sizes=bad)


def _padded(boxes, device="cpu"):
    n = boxes.shape[0]
    return PaddedDetections(boxes[None].to(device), torch.ones(1, n, device=device),
                            torch.ones(1, n, dtype=torch.long, device=device),
                            torch.full((1,), n, dtype=torch.long, device=device))


def _square_boxes(sides, top=30.0, left=20.0):
    sides = torch.as_tensor(sides, dtype=torch.float32)
    return torch.stack([torch.full_like(sides, top), torch.full_like(sides, left), top + sides, left + sides], 1)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_static_mask_stage_dispatches_the_same_ops_for_10_and_300_boxes(soft_models):
    """Fast mode at fixed budgets is one static graph: the number of aten ops it dispatches
    does not depend on how many boxes there are (up to the budgets)."""
    pipeline = FastPipeline(*soft_models, SIZE, crop_sizes=(12,))
    budgets = [300]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, *SIZE, generator=g)
    counts = []
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(x)
        for n in (10, 300):
            corner = torch.rand(n, 2, generator=g) * 90
            side = 6 + torch.rand(n, 2, generator=g) * 30
            det = _padded(torch.cat([corner, corner + side], 1))
            with _CountOps() as ops_seen:
                probs, sizes = pipeline.segment_padded(x, features, det.boxes, det.counts, budgets)
            counts.append(ops_seen.count)
            assert probs.shape[:2] == (1, n) and bool((sizes > 0).all())
    assert counts[0] == counts[1], counts


def test_boxes_past_a_shape_budget_get_no_mask(soft_models):
    pipeline = FastPipeline(*soft_models, SIZE, crop_sizes=(16,))
    det = _padded(_square_boxes([14.0, 15.0, 16.0, 17.0]))
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1)))
        full, full_sizes = pipeline.segment_padded(x, features, det.boxes, det.counts, [4])
        part, part_sizes = pipeline.segment_padded(x, features, det.boxes, det.counts, [2])
    assert full_sizes[0].tolist() == [[16, 16]] * 4
    assert part_sizes[0].tolist() == [[16, 16]] * 2 + [[0, 0]] * 2  # the first rows keep their masks
    torch.testing.assert_close(part[0, :2], full[0, :2], atol=1e-5, rtol=0)


def test_static_masks_do_not_depend_on_the_other_boxes(soft_models):
    """A box decoded among many equals the same box decoded alone (budgets, padding rows and
    other shapes do not leak into it)."""
    pipeline = FastPipeline(*soft_models, SIZE)
    boxes = _square_boxes([6.0, 13.0, 20.0, 33.0, 50.0, 70.0])
    det = _padded(boxes)
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(2)))
        probs, sizes = pipeline.segment_padded(x, features, det.boxes, det.counts, None)
        for k in range(len(boxes)):
            one = _padded(boxes[k : k + 1])
            alone, alone_sizes = pipeline.segment_padded(x, features, one.boxes, one.counts, None)
            h, w = alone_sizes[0, 0].tolist()
            assert sizes[0, k].tolist() == [h, w] and h > 0
            torch.testing.assert_close(probs[0, k, :h, :w], alone[0, 0, :h, :w], atol=1e-5, rtol=0)


def test_decoder_steps_batch_boxes_across_level0_sizes(soft_models):
    """Exact mode: boxes whose level-0 crops differ but whose deeper crops match share the
    deep decoder steps; each box's mask equals decoding it alone."""
    pipeline = FastPipeline(*soft_models, SIZE, mode="exact")
    calls = []
    decode_stage = pipeline.segmenter.decode_stage
    pipeline.segmenter.decode_stage = lambda level, pre, skip: calls.append((level, pre.shape[0])) or decode_stage(
        level, pre, skip)
    # level-0 sizes 32..38 px: 7 level-0 crop shapes, fewer on levels 3 and 4
    boxes = _square_boxes([32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0], 40.0, 40.0)
    det = _padded(boxes)
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(x)
        probs, sizes = pipeline.segment_padded(x, features, det.boxes, det.counts)
        probs, sizes = probs[0], sizes[0]
        level3 = [n for level, n in calls if level == 3]
        level0 = [n for level, n in calls if level == 0]
        assert sum(level3) == sum(level0) == 7
        assert len(level0) == len(set(sizes[:, 0].tolist())) == 7 and len(level3) < 7
        for k in range(7):
            one = _padded(boxes[k : k + 1])
            alone, alone_sizes = pipeline.segment_padded(x, features, one.boxes, one.counts)
            h, w = alone_sizes[0, 0].tolist()
            assert sizes[k].tolist() == [h, w]
            torch.testing.assert_close(probs[k, :h, :w], alone[0, 0, :h, :w], atol=1e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode, syncs", [("fast", 0), ("exact", 1)])
def test_mask_stage_synchronisations_on_a_gpu(soft_models, mode, syncs):
    """Static fast mode never waits for the device; exact mode plans from one copy."""
    pipeline = FastPipeline(*soft_models, SIZE, mode=mode).cuda()
    det = _padded(_square_boxes([12.0, 20.0, 33.0, 34.0, 50.0]), "cuda")
    with torch.inference_mode():
        x, _, _, features = pipeline.run_detector(torch.rand(1, 3, *SIZE, device="cuda"))
        plan = pipeline.plan(det, [SIZE])
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                probs, sizes = pipeline.segment(x, features, det, plan)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    seen = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(seen) == syncs, seen
    assert probs.shape[1] == 5 and bool((sizes > 0).all())


def test_core_buffers_live_with_the_priors():
    """FastCore.core() (what export scripts) builds its buffers where the pipeline's priors are."""
    from ancis_fast.pipeline.fast import FastCore

    priors = torch.zeros(10, 4, device="meta")
    core = FastCore(torch.nn.Identity(), torch.nn.Identity(), priors, SIZE)
    for module in (core, core.core()):
        assert module.size_edges.device == priors.device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_whole_static_pipeline_replays_as_a_cuda_graph(soft_models):
    from ancis_fast.backends.cudagraph import CudaGraphPipeline
    from ancis_fast.pipeline.fast import static_budgets

    core = FastPipeline(*soft_models, SIZE, max_det=64).cuda().core()
    x = torch.cat([torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]).cuda()
    static = core.core(shape_budgets=static_budgets(core, x[:2]))
    graph = CudaGraphPipeline(static, x[:2])
    for batch in (x[:2], x[2:]):
        with torch.inference_mode():
            expected = static(batch)
        got = graph(batch)
        for a, b in zip(expected, got):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="static pipeline"):
        CudaGraphPipeline(core, x[:2])


def test_outputs_of_a_wider_static_graph_paste_like_the_planned_path(soft_models):
    """An exported / CUDA-graph pipeline's outputs (fixed budgets, more rows than the batch
    needs) pasted through the batch plan give the same cells as the planned path."""
    from ancis_fast.pipeline.fast import static_budgets
    from ancis_fast.pipeline.preprocess import preprocess

    pipeline = FastPipeline(*soft_models, SIZE, max_det=256, crop_sizes=(16, 32))
    x = torch.cat([preprocess(blob_image(seed=s), SIZE)[0] for s in range(2)])
    sizes = [SIZE, SIZE]
    core = pipeline.core()
    static = core.core(shape_budgets=static_budgets(core, x))
    with torch.inference_mode():
        boxes, scores, labels, counts, probs, mask_sizes = static(x)
        det = PaddedDetections(boxes, scores, labels, counts)
        plan = pipeline.plan(det, sizes)
        assert plan.image_budget < boxes.shape[1]
        from_graph = pipeline.paste(det, probs, mask_sizes, sizes, plan)
        x_in, _, _, features = pipeline.run_detector(x)
        planned_probs, planned_sizes = pipeline.segment(x_in, features, det, plan)
        planned = pipeline.paste(det, planned_probs, planned_sizes, sizes, plan)
    for b, (graph_cells, planned_cells) in enumerate(zip(from_graph, planned)):
        assert len(graph_cells) == len(planned_cells) == int(counts[b]) > 0
        np.testing.assert_array_equal(graph_cells.boxes, planned_cells.boxes)
        np.testing.assert_array_equal(graph_cells.masks, planned_cells.masks)


def test_no_box_has_more_levels_than_its_crop_shape_decodes(soft_models):
    """Fast mode skips the decoder steps deeper than ``max_levels`` of a crop shape; every box
    of the shape must have at most that many levels (spec §5's own count, from the reference
    rule in ops.level_crop_bounds), whatever its size and place, borders included."""
    pipeline = FastPipeline(*soft_models, (512, 384))
    gen = torch.Generator().manual_seed(5)
    corner = torch.rand(20000, 2, generator=gen) * torch.tensor([560.0, 430.0]) - 24
    size = torch.exp(torch.rand(20000, 2, generator=gen) * 5.5) + 1  # 2 to 250 px, log-uniform
    boxes = torch.cat([corner, corner + size], dim=1)[None]
    level_sizes = [[512 // 2**k, 384 // 2**k] for k in range(5)]
    bounds, num_levels = pipeline.crop_bounds(boxes, torch.tensor([boxes.shape[1]]), level_sizes)
    classes = size_classes(bounds[:, 0], pipeline.size_edges)
    caps = torch.tensor([pipeline.max_levels(i, level_sizes) for i in range(len(pipeline.crop_shapes))])
    assert (num_levels <= caps[classes]).all()
    assert (caps[classes] - num_levels).float().mean() < 1.5  # not far above the levels boxes have
    assert caps.min() <= 3 and caps.max() == 5  # small shapes skip the deep steps
