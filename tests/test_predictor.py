"""End to end through the reference path with seeded random weights."""
import cv2
import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.pipeline import reference
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image

SIZE = (128, 128)


@pytest.fixture(scope="module")
def predictor(models):
    detector, segmenter = models
    # the release's detection limits, which the spec steps below use
    return Predictor.from_models(detector, segmenter, backend="reference", config=PredictorConfig(
        input_size=SIZE, max_candidates=200, max_detections=500))


def test_end_to_end_shapes_and_consistency(predictor, bgr_image):
    inst = predictor.predict(bgr_image)
    h, w = bgr_image.shape[:2]
    assert len(inst) > 0
    assert inst.boxes.dtype == np.float32 and inst.boxes.shape == (len(inst), 4)
    assert inst.scores.dtype == np.float32 and (np.diff(inst.scores) <= 0).all()
    assert (inst.scores > predictor.config.conf_thresh).all()
    assert inst.masks.dtype == bool and inst.masks.shape == (len(inst), h, w)
    assert inst.masks.any(axis=(1, 2)).sum() > 0
    labels = inst.label_image()
    assert labels.shape == (h, w)
    covered = inst.masks.any(axis=0)
    assert ((labels > 0) == covered).all()
    first_owner = np.where(covered, inst.masks.argmax(axis=0) + 1, 0)  # lowest index = highest score
    np.testing.assert_array_equal(labels, first_owner)


def test_matches_the_spec_steps_done_by_hand(predictor, bgr_image):
    """Boxes and masks equal a manual run of spec §1, §4, §5, §6."""
    inst = predictor.predict(bgr_image)
    h0, w0 = bgr_image.shape[:2]
    x = torch.from_numpy(cv2.resize(bgr_image.astype(np.float32), SIZE[::-1]) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        locs, conf, feats = predictor.detector(x)
        det = reference.detect(locs, conf, predictor.priors, 0.3, 0.3)
        boxes, scores, _ = reference.detections_of_image(det[0])
        feats[0] = predictor.segmenter.encode_c0(feats[0])
        probs = reference.segment(predictor.segmenter, feats, boxes)
    np.testing.assert_array_equal(inst.scores, scores.numpy())
    scale = np.array([h0 / SIZE[0], w0 / SIZE[1]] * 2, np.float32)
    np.testing.assert_allclose(inst.boxes, boxes.numpy() * scale, rtol=1e-6)
    for i in range(len(inst)):
        if probs[i] is None:
            assert not inst.masks[i].any()
            continue
        expected = reference.paste_mask(probs[i].numpy(), boxes[i], SIZE, (h0, w0), 0.5)
        np.testing.assert_array_equal(inst.masks[i], expected)


def test_gray_image_equals_its_bgr_copy(predictor):
    gray = blob_image(seed=4)[:, :, 0]
    a = predictor.predict(gray)
    b = predictor.predict(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_16bit_image_runs_and_reads_from_disk(predictor, tmp_path):
    image16 = (blob_image(seed=5)[:, :, 0].astype(np.uint16) * 200)
    path = tmp_path / "img16.png"
    cv2.imwrite(str(path), image16)
    inst = predictor.predict(path)
    assert inst.image_size == image16.shape
    same = predictor.predict(image16)
    np.testing.assert_array_equal(inst.boxes, same.boxes)


def test_bad_inputs(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predictor.predict(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="corrupt.png"):
        predictor.predict(corrupt)
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(np.zeros((0, 0), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(np.full((20, 20), np.nan))


def test_constructor_errors(models):
    detector, segmenter = models
    with pytest.raises(ValueError, match="backend='warp'"):
        Predictor.from_models(detector, segmenter, backend="warp")
    with pytest.raises(ValueError, match="both"):
        Predictor(detector_weights=detector.state_dict())
    with pytest.raises(ValueError, match="conf_thresh=1.5"):
        PredictorConfig(conf_thresh=1.5)
    with pytest.raises(ValueError, match="input_size"):
        PredictorConfig(input_size=(32, 32))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor.from_models(detector, segmenter, device="cuda")


def test_weights_by_path(models, tmp_path):
    detector, segmenter = models
    torch.save(detector.state_dict(), tmp_path / "det.pth")
    torch.save(segmenter.state_dict(), tmp_path / "seg.pth")
    p = Predictor(tmp_path / "det.pth", tmp_path / "seg.pth", input_size=SIZE)
    ref = Predictor.from_models(detector, segmenter, config=PredictorConfig(input_size=SIZE))
    image = blob_image(seed=6)
    np.testing.assert_array_equal(p.predict(image).boxes, ref.predict(image).boxes)
    with pytest.raises(ValueError, match="--weights-det and --weights-seg"):
        Predictor(tmp_path / "det.pth", None, input_size=SIZE)


def test_prior_height_sizes_the_priors_of_every_backend(models):
    """A model trained at a 512 input runs at 256 with the 512 input's prior sizes."""
    from ancis_fast.models import make_priors

    config = PredictorConfig(input_size=(256, 256), prior_height=512)
    expected = make_priors(256, 256, scale_height=512)
    assert not torch.equal(expected, make_priors(256, 256))
    reference_predictor = Predictor.from_models(*models, backend="reference", config=config)
    torch.testing.assert_close(reference_predictor.priors, expected, rtol=0, atol=0)
    fast = Predictor.from_models(*models, backend="eager", config=config)
    torch.testing.assert_close(fast.pipeline.priors, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_detection_limits_keep_a_prefix_of_the_unlimited_result(models, backend):
    """Greedy NMS keeps boxes in score order, so capping the candidates (or the detections)
    at N keeps exactly the unlimited result's survivors among its N best: a prefix."""
    image = blob_image(seed=3)
    make = lambda **limits: Predictor.from_models(*models, backend=backend, config=PredictorConfig(  # noqa: E731
        input_size=SIZE, **limits))
    unlimited = make().predict(image)
    assert len(unlimited) > 12
    for limits, most in (({"max_candidates": 12}, 12), ({"max_detections": 5}, 5), ({"max_candidates": 200}, 200)):
        capped = make(**limits).predict(image)
        assert 0 < len(capped) <= most
        np.testing.assert_array_equal(capped.boxes, unlimited.boxes[: len(capped)])
        np.testing.assert_array_equal(capped.masks, unlimited.masks[: len(capped)])
    assert len(make(max_detections=5).predict(image)) == 5
    with pytest.raises(ValueError, match="max_candidates=0"):
        PredictorConfig(max_candidates=0)
    with pytest.raises(ValueError, match="max_detections=0"):
        PredictorConfig(max_detections=0)


def test_the_default_backend_is_the_fast_path_for_the_device(models):
    """``backend="auto"`` (Predictor, from_models, CLI): eager on a CPU, torchscript on a GPU."""
    import inspect

    from ancis_fast.backends import resolve_backend
    from ancis_fast.cli import make_parser

    assert inspect.signature(Predictor).parameters["backend"].default == "auto"
    assert make_parser().parse_args(["predict", "x.png", "--out", "o"]).backend == "auto"
    auto = Predictor.from_models(*models, config=PredictorConfig(input_size=SIZE))
    assert auto.backend == "eager" and auto.pipeline is not None
    assert resolve_backend("auto", torch.device("cuda")) == "torchscript"
    assert resolve_backend("reference", torch.device("cuda")) == "reference"
    with pytest.raises(ValueError, match="backend='fastest'"):
        resolve_backend("fastest", torch.device("cpu"))


def test_min_size_drops_the_cells_that_show_fewer_pixels(models, bgr_image):
    """min_size keeps exactly the cells whose part of the label image (overlaps resolved)
    has at least that many pixels, and the predict_batch / stream paths do the same."""
    everything = Predictor.from_models(*models, config=PredictorConfig(input_size=SIZE)).predict(bgr_image)
    shown = everything.visible().areas
    min_size = int(np.median(shown[shown > 0]))
    assert (shown < min_size).any() and (shown >= min_size).any()
    predictor = Predictor.from_models(*models, config=PredictorConfig(input_size=SIZE, min_size=min_size))
    kept = predictor.predict(bgr_image)
    np.testing.assert_array_equal(kept.scores, everything.scores[shown >= min_size])
    assert (kept.visible().areas >= min_size).all()
    np.testing.assert_array_equal(predictor.predict_batch([bgr_image])[0].scores, kept.scores)
    np.testing.assert_array_equal(next(iter(predictor.stream([bgr_image]))).scores, kept.scores)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="min_size="):
            PredictorConfig(min_size=bad)
