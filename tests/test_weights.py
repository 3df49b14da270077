"""Checkpoint loading and its error messages."""
import pytest
import torch

from ancis_fast.models import CheckpointError, build_detector, build_segmenter, infer_backbone, load_weights
from ancis_fast.models.weights import default_weights


@pytest.fixture(scope="module")
def r50_state():
    torch.manual_seed(3)
    return build_detector("resnet50").state_dict()


def test_dataparallel_prefix_is_stripped(tmp_path, r50_state):
    path = tmp_path / "det.pth"
    torch.save({f"module.{k}": v for k, v in r50_state.items()}, path)
    model = load_weights(build_detector(), path)
    torch.testing.assert_close(model.state_dict()["fusion_c3.weight"], r50_state["fusion_c3.weight"])


def test_wrapped_state_dict_and_fp16_are_accepted(tmp_path, r50_state):
    path = tmp_path / "det.pt"
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in r50_state.items()}}, path)
    model = load_weights(build_detector(), path)
    assert model.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.conv1.weight, r50_state["conv1.weight"].half().float())


def test_wrong_backbone_names_the_fix(r50_state):
    assert infer_backbone(r50_state) == "resnet50"
    with pytest.raises(CheckpointError) as info:
        load_weights(build_detector("resnet101"), r50_state)
    message = str(info.value)
    assert "missing" in message and "layer3.6." in message
    assert "resnet50 detector but the model is resnet101" in message and "backbone='resnet50'" in message


def test_segmenter_file_given_as_detector():
    seg_state = build_segmenter().state_dict()
    with pytest.raises(CheckpointError, match="segmenter checkpoint given as the detector"):
        load_weights(build_detector(), seg_state)
    with pytest.raises(CheckpointError, match="detector checkpoint given as the segmenter"):
        load_weights(build_segmenter(), build_detector("resnet18").state_dict())


def test_shape_mismatch_is_reported(r50_state):
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conf_c3.weight"):
        load_weights(build_detector(num_classes=3), r50_state)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(build_segmenter(), tmp_path / "nope.pth")
    bad = tmp_path / "truncated.pth"
    torch.save(build_segmenter().state_dict(), bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_weights(build_segmenter(), bad)


def test_default_weights_missing_says_what_to_do(monkeypatch, tmp_path):
    import ancis_fast.models.weights as weights

    monkeypatch.setattr(weights, "DEFAULT_DETECTOR", tmp_path / "none_det.pt")
    with pytest.raises(FileNotFoundError, match="detector_weights="):
        default_weights()


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    """Never torch's advice to load with weights_only=False: unpickling can run code."""
    import argparse

    import cv2
    import numpy as np

    cases = {"image.pth": "it is a PNG image", "empty.pth": "it is an empty file",
             "notes.pth": "it is not a file written by torch.save", "pickled.pth": "Python objects other than tensors"}
    cv2.imwrite(str(tmp_path / "image.pth.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "image.pth.png").rename(tmp_path / "image.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.pth").write_text("weights: see the lab wiki")
    torch.save({"model": argparse.Namespace(layers=3)}, tmp_path / "pickled.pth")  # not a state dict of tensors
    for name, what in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_weights(build_segmenter(), tmp_path / name)
        message = str(info.value)
        assert name in message and what in message and "state_dict()" in message, message
        assert "weights_only" not in message, message
