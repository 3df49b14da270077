"""Tiny end-to-end training runs (ResNet-18, 128 px, CPU): the full loop, checkpoints in
the release format, resume, and a decreasing loss."""
import json

import numpy as np
import pytest
import torch

from ancis_fast.data.synthetic import SynthConfig, generate
from ancis_fast.models import build_detector, build_segmenter, load_weights, make_priors
from ancis_fast.pipeline import reference
from ancis_fast.train import DetectorTrainConfig, SegmenterTrainConfig, train_detector, train_segmenter
from ancis_fast.train.checkpoint import export_half
from ancis_fast.train.data import ExampleDataset, SyntheticSource, collate
from ancis_fast.train.segmenter import mask_target, segment_logits, training_boxes

SIZE = (128, 128)
SYNTH = SynthConfig(size=SIZE, diameter=(12.0, 22.0), count=(5, 25), p_16bit=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples():
    return [generate((9, i), SYNTH) for i in range(8)]


def _det_config(out, **changes):
    base = dict(out_dir=str(out), backbone="resnet18", input_size=SIZE, recipe="fast", epochs=3, batch_size=2,
                lr=1e-3, warmup_steps=0, device="cpu", quiet=True, seed=0)
    return DetectorTrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, samples):
    out = tmp_path_factory.mktemp("det")
    summary = train_detector(_det_config(out), samples, samples[:2])
    return out, summary


def test_detector_loop_writes_release_checkpoints_and_learns(trained):
    out, summary = trained
    assert summary["global_step"] == 12 and summary["epoch"] == 3 and summary["skipped_steps"] == 0
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0], losses
    for name in ("detector.pt", "detector_best.pt", "detector_state.pt", "log.jsonl"):
        assert (out / name).is_file()
    state = torch.load(out / "detector.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state) and "conf_c3.weight" in state
    load_weights(build_detector("resnet18"), out / "detector.pt")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all({"ap50", "ap70", "loss"} <= set(r) for r in records)


def test_interrupted_and_resumed_run_matches_the_straight_run(tmp_path, trained, samples):
    out, _ = trained
    first = train_detector(_det_config(tmp_path, max_steps=5), samples, None)
    assert first["stopped_early"] and first["global_step"] == 5
    resumed = train_detector(_det_config(tmp_path, resume=True), samples, None)
    assert resumed["global_step"] == 12 and not resumed["stopped_early"]
    straight = torch.load(out / "detector.pt", weights_only=True)
    again = torch.load(tmp_path / "detector.pt", weights_only=True)
    for key, value in straight.items():
        assert torch.allclose(value.float(), again[key].float(), atol=1e-4, rtol=1e-3), key


def test_time_limit_ends_with_validation_and_a_resumable_checkpoint(tmp_path, samples):
    summary = train_detector(_det_config(tmp_path, time_limit=1e-3), samples, samples[:2])
    assert summary["stopped_early"] and summary["global_step"] == 1 and summary["epoch"] == 0
    assert summary["best_weights"] is not None and (tmp_path / "detector_best.pt").is_file()
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and "ap50" in record
    state = torch.load(tmp_path / "detector_state.pt", weights_only=False)
    assert state["elapsed"] > 0 and state["global_step"] == 1
    # the spent time is kept: a resumed run under the same limit stops after one more step
    again = train_detector(_det_config(tmp_path, time_limit=1e-3, resume=True), samples, None)
    assert again["global_step"] == 2 and again["stopped_early"]


def test_a_slice_stops_without_validating_and_leaves_the_schedule_to_the_resumed_run(tmp_path, samples):
    limit = 3600.0  # the run's schedule: an hour of training, far from spent by these steps
    summary = train_detector(_det_config(tmp_path, time_limit=limit, stop_after=1e-3), samples, samples[:2])
    assert summary["stopped_early"] and summary["global_step"] == 1 and summary["best_weights"] is None
    assert not (tmp_path / "log.jsonl").exists()  # no validation: the schedule is not over
    state = torch.load(tmp_path / "detector_state.pt", weights_only=False)
    assert state["global_step"] == 1 and state["elapsed"] < limit
    again = train_detector(_det_config(tmp_path, time_limit=limit, stop_after=1e-3, resume=True), samples, None)
    assert again["global_step"] == 2 and again["stopped_early"]
    with pytest.raises(ValueError, match="stop_after"):
        _det_config(tmp_path, stop_after=0.0)


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_freeze_bn_keeps_the_running_statistics_of_the_initial_weights(tmp_path, trained, samples, freeze_bn):
    out, _ = trained
    summary = train_detector(_det_config(tmp_path, init_weights=str(out / "detector.pt"), max_steps=2,
                                         freeze_bn=freeze_bn), samples, None)
    assert summary["global_step"] == 2
    before = torch.load(out / "detector.pt", weights_only=True)
    after = torch.load(tmp_path / "detector.pt", weights_only=True)
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats
    assert all(torch.equal(before[k], after[k]) for k in stats) == freeze_bn
    assert not torch.equal(before["conf_c3.weight"], after["conf_c3.weight"])  # the weights still train


def test_half_precision_export_loads(tmp_path, trained):
    out, _ = trained
    half = export_half(out / "detector.pt", tmp_path / "det16.pt")
    state = torch.load(half, weights_only=True)
    assert state["conf_c3.weight"].dtype == torch.float16
    model = load_weights(build_detector("resnet18"), half)
    assert model.conf_c3.weight.dtype == torch.float32


def test_grouped_decoding_equals_one_pass_per_box(samples):
    torch.manual_seed(0)
    detector, segmenter = build_detector("resnet18").eval(), build_segmenter("resnet18").eval()
    dataset = ExampleDataset(samples[:1], SIZE, None)
    batch = collate([dataset[0]])
    with torch.no_grad():
        _, _, features = detector(batch["images"])
        features = [segmenter.encode_c0(batch["images"])] + list(features[1:])
        sizes = [tuple(f.shape[-2:]) for f in features]
        boxes = torch.cat([batch["boxes"][0], batch["boxes"][0][:2]])  # duplicates share a group
        jobs = [(0, reference.level_crop_bounds(b, SIZE, sizes)) for b in boxes]
        jobs = [j for j in jobs if j[1]]
        grouped = {k: logits[i] for members, logits in segment_logits(segmenter, features, jobs)
                   for i, k in enumerate(members)}
        singles = reference.segment(segmenter, features, boxes)
    singles = [s for s in singles if s is not None]
    assert len(grouped) == len(singles) == len(jobs)
    for k, single in enumerate(singles):
        assert torch.allclose(torch.sigmoid(grouped[k][0]), single, atol=1e-5)


def test_mask_target_and_training_boxes():
    labels = np.zeros((20, 20), np.int32)
    labels[5:10, 5:12] = 3
    target = mask_target(labels, 3, torch.tensor([5.0, 5.0, 9.0, 11.0]), (20, 20), (5, 7))
    assert target.shape == (5, 7) and target.min() == 1.0
    assert mask_target(labels, 3, torch.tensor([4.0, 4.0, 10.0, 12.0]), (20, 20), (7, 9)).sum() == 35
    gt = torch.tensor([[5.0, 5.0, 9.0, 11.0]])
    pred = torch.tensor([[5.0, 5.0, 9.0, 11.0], [15.0, 15.0, 18.0, 18.0]])
    boxes, ids = training_boxes(pred, gt, torch.tensor([3]), 0.5, 0, torch.Generator())
    assert boxes.tolist() == gt.tolist() and ids.tolist() == [3]
    boxes, _ = training_boxes(pred[1:], gt, torch.tensor([3]), 0.5, 0, torch.Generator(), include_gt=True)
    assert len(boxes) == 1


def test_segmenter_loop(tmp_path, trained, samples):
    out, _ = trained
    config = SegmenterTrainConfig(out_dir=str(tmp_path), detector_weights=str(out / "detector.pt"),
                                  backbone="resnet18", input_size=SIZE, recipe="fast", epochs=1, batch_size=2,
                                  warmup_steps=0, device="cpu", quiet=True, gt_boxes=True, max_boxes=8)
    summary = train_segmenter(config, samples[:4], samples[:1])
    assert summary["global_step"] == 2 and summary["skipped_steps"] == 0
    assert np.isfinite(summary["history"][0]["loss"]) and summary["history"][0]["loss"] > 0
    assert "ap50" in summary["history"][0]
    load_weights(build_segmenter("resnet18"), tmp_path / "segmenter.pt")


def test_synthetic_source_is_fresh_per_epoch_and_examples_are_consistent():
    source = SyntheticSource(2, SYNTH, seed=1)
    first = source[0].labels
    source.set_epoch(1)
    assert not np.array_equal(first, source[0].labels)
    dataset = ExampleDataset(SyntheticSource(1, SYNTH, seed=1, fresh=False), SIZE, None)
    example = dataset[0]
    assert example.image.shape == (3, *SIZE) and 0.0 <= float(example.image.min()) <= float(example.image.max()) <= 1.0
    for box, label_id in zip(example.boxes, example.ids):
        ys, xs = np.nonzero(example.labels.numpy() == int(label_id))
        assert box[0] >= ys.min() and box[2] <= ys.max() and box[1] >= xs.min() and box[3] <= xs.max()
    assert make_priors(*SIZE).shape[0] > 0


def test_stage_configs_share_fields_and_check_prior_height():
    from ancis_fast.train.detector import DetectorTrainConfig
    from ancis_fast.train.segmenter import SegmenterTrainConfig

    det = DetectorTrainConfig(out_dir="x", recipe="fast", prior_height=512)
    seg = SegmenterTrainConfig(out_dir="x", detector_weights="d.pt", recipe="fast", prior_height=512)
    assert det.resolved_recipe().optimizer == "adamw" and seg.resolved_recipe().name == "fast"
    assert det.resolved_recipe() != seg.resolved_recipe()  # each stage keeps its own recipes
    with pytest.raises(ValueError, match="prior_height=8"):
        DetectorTrainConfig(out_dir="x", prior_height=8)
    with pytest.raises(TypeError):
        SegmenterTrainConfig(out_dir="x")  # the detector weights are required
