"""``precision="int8"``: the detector trunk quantized with torch.ao, against fp32 (bundled model)."""
import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.backends.quantize import Int8TrunkDetector, int8_available
from ancis_fast.evaluate import Evaluator, mask_iou, matching_stats
from ancis_fast.export import ExportUnavailable, export_predictor, load_exported
from ancis_fast.io.readers import read_image
from ancis_fast.pipeline.preprocess import preprocess
from test_default_model import ASSETS

available, why = int8_available()
pytestmark = pytest.mark.skipif(not available, reason=f"int8 unavailable: {why}")


@pytest.fixture(scope="module")
def real_image():
    return read_image(ASSETS / "dsb2018_nuclei.png"), read_image(ASSETS / "dsb2018_nuclei_labels.png")


@pytest.fixture(scope="module")
def int8_eager():
    return Predictor(backend="eager", precision="int8")


def _ap50(instances, labels) -> float:
    evaluator = Evaluator()
    evaluator.add_masks(instances.masks, instances.scores, labels)
    return evaluator.summary()["ap50"]


def test_int8_agrees_with_fp32_on_a_real_image(int8_eager, real_image):
    image, labels = real_image
    detector = int8_eager.pipeline.detector
    assert isinstance(detector, Int8TrunkDetector)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in detector.trunk.modules())
    fp32 = Predictor(backend="eager").predict(image)
    int8 = int8_eager.predict(image)
    agreement = matching_stats(mask_iou(int8.masks, fp32.masks), 0.5)  # fp32's cells as the truth
    assert agreement.f1 >= 0.95 and agreement.sq >= 0.9, agreement.to_dict()
    assert _ap50(int8, labels) >= _ap50(fp32, labels) - 0.03


def test_int8_torchscript_and_its_export_equal_eager(int8_eager, real_image, tmp_path):
    image, _ = real_image
    expected = int8_eager.predict(image)
    scripted = Predictor(backend="torchscript", precision="int8")
    got = scripted.predict(image)
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)

    path = export_predictor(int8_eager, tmp_path / "int8.ts")
    reloaded = load_exported(path)
    assert reloaded.config["precision"] == "int8"
    x, _ = preprocess(image, int8_eager.config.input_size)
    with torch.inference_mode():
        expected_boxes, expected_scores = int8_eager.pipeline.core()(x)[:2]
    boxes, scores = reloaded(x)[:2]
    torch.testing.assert_close(boxes, expected_boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    with pytest.raises(ExportUnavailable, match="torchscript only"):
        export_predictor(int8_eager, tmp_path / "int8.pt2", format="aoti")


def test_calibrate_replaces_the_ranges(int8_eager, real_image):
    image, _ = real_image
    predictor = Predictor(backend="eager", precision="int8")
    before = predictor.pipeline.detector
    dim = (image.astype(np.float32) * 0.25).astype(np.uint8)  # ranges of a 4x dimmer image
    assert predictor.calibrate([dim]) is predictor
    assert predictor.pipeline.detector is not before and predictor.calibration_images is not None
    scores = predictor.predict(image).scores
    assert len(scores) > 0 and not np.allclose(scores[:10], int8_eager.predict(image).scores[:10], atol=1e-6)


@pytest.mark.parametrize("backend, device, match", [
    ("reference", "cpu", "reference path is fp32 only"),
    ("compile", "cpu", "int8 runs with backend 'eager' or 'torchscript'"),
    ("eager", "cuda", "int8 path is for CPUs"),
])
def test_int8_refuses_what_it_cannot_run(backend, device, match):
    from ancis_fast.backends.precision import resolve_precision

    with pytest.raises(ValueError, match=match):
        resolve_precision("int8", torch.device(device), backend)


def test_calibrate_needs_int8():
    from conftest import random_models
    from ancis_fast.predictor import PredictorConfig

    predictor = Predictor.from_models(*random_models(), backend="eager", config=PredictorConfig(input_size=(128, 128)))
    with pytest.raises(ValueError, match="calibrate"):
        predictor.calibrate([np.zeros((64, 64), np.uint8)])


class _Padded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.padding = [1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, self.padding)


def test_script_ignores_stale_builtin_entries():
    """An object at the address of a replaced op object must not be taken for that op
    (torch.ao.quantization's import leaves such entries: scripting then failed at random)."""
    from torch.jit._builtins import _get_builtin_table
    from ancis_fast.backends.torchscript import script, stale_builtins

    library = torch.library.Library("ancis_stale_test", "DEF")
    library.define("f(Tensor x) -> Tensor")
    assert torch.ops.ancis_stale_test.f is not None  # looked up: its packet now exists
    module = _Padded()
    table = _get_builtin_table()
    table[id(module.padding)] = "ancis_stale_test::f"  # as if `padding` sat where an old op object was
    assert id(module.padding) in stale_builtins()
    x = torch.ones(1, 2)
    assert torch.equal(script(module)(x), module(x))
    assert id(module.padding) not in table


def test_quantization_import_leaves_no_stale_builtins(int8_eager):
    from ancis_fast.backends.torchscript import stale_builtins

    assert stale_builtins() == []


def test_cli_predicts_in_int8_calibrated_on_given_images(tmp_path, capsys):
    from ancis_fast.cli import main

    out = tmp_path / "out"
    code = main(["predict", str(ASSETS / "sample.png"), "--backend", "eager", "--precision", "int8",
                 "--calibrate", str(ASSETS / "sample.png"), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "sample_labels.tif").is_file()
    code = main(["predict", str(ASSETS / "sample.png"), "--backend", "eager", "--calibrate", str(ASSETS / "sample.png"),
                 "--out", str(out), "--quiet"])
    assert code == 2 and "int8" in capsys.readouterr().err
