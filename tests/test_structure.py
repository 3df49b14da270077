"""One way through the code (issue #20): one config, one backend registry, one stage
interface for both pipelines, one export-format table, and no import cycles."""
import ast
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import ancis_fast.predictor as predictor_module
from ancis_fast import Instances, Predictor, PredictorConfig
from ancis_fast.backends import BACKEND_CHOICES, REGISTRY, build
from ancis_fast.backends.precision import PRECISION_NAMES
from ancis_fast.cli import config_overrides, make_parser
from ancis_fast.config import FIELDS
from ancis_fast.export import FORMATS
from ancis_fast.pipeline.fast import MODES, FastPipeline
from ancis_fast.pipeline.preprocess import NORMALIZE_MODES, preprocess
from ancis_fast.pipeline.reference import ReferencePipeline
from ancis_fast.pipeline.stages import STAGES
from conftest import blob_image, paired_mask_ious

SIZE = (128, 128)
PACKAGE = Path(__file__).parents[1] / "ancis_fast"
# the release's detection limits: random weights otherwise give hundreds of near-tied cells
LIMITS = dict(input_size=SIZE, max_candidates=200, max_detections=500)


# ------------------------------------------------------------------ one config

def test_keywords_override_the_given_config(models):
    base = PredictorConfig(input_size=SIZE, conf_thresh=0.4)
    predictor = Predictor.from_models(*models, backend="reference", config=base, seg_thresh=0.6, normalize="minmax")
    assert predictor.config == PredictorConfig(input_size=SIZE, conf_thresh=0.4, seg_thresh=0.6, normalize="minmax")
    assert predictor.config.normalization.mode == "minmax" and base.seg_thresh == 0.5  # the given one is unchanged
    with pytest.raises(TypeError, match="conf_threshold.*PredictorConfig has input_size"):
        Predictor.from_models(*models, backend="reference", conf_threshold=0.4)


def test_config_round_trips_through_json():
    config = PredictorConfig(input_size=(256, 320), percentiles=(2, 98), zoom=2, crop_sizes=(16, 32))
    stored = json.loads(json.dumps(config.to_dict()))
    assert list(stored) == list(FIELDS) and PredictorConfig(**stored) == config
    assert stored == {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def test_cli_options_are_the_config_fields_with_its_defaults_and_choices():
    parser = make_parser()
    args = parser.parse_args(["predict", "x.png", "--out", "out"])
    assert PredictorConfig(**config_overrides(args)) == PredictorConfig()
    assert set(config_overrides(args)) == set(FIELDS) - {"percentiles", "prior_height", "crop_sizes"}
    changed = parser.parse_args(["predict", "x.png", "--out", "o", "--seg-thresh", "0.7", "--mode", "exact",
                                 "--zoom", "2", "--input-size", "256x320"])
    assert PredictorConfig(**config_overrides(changed)) == PredictorConfig(seg_thresh=0.7, mode="exact", zoom=2,
                                                                           input_size=(256, 320))
    choices = {a.dest: tuple(a.choices) for a in parser._subparsers._group_actions[0].choices["predict"]._actions
               if a.choices}
    assert choices["backend"] == BACKEND_CHOICES and choices["mode"] == MODES
    assert choices["precision"] == PRECISION_NAMES and choices["normalize"] == NORMALIZE_MODES


# ------------------------------------------------------------------ one backend registry

def test_build_prepares_copies_and_leaves_the_models_alone(models):
    detector, segmenter = models
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    config = PredictorConfig(input_size=SIZE)
    assert build("reference", detector, segmenter, config, torch.device("cpu")) == (detector, segmenter)
    fast_detector, fast_segmenter = build("eager", detector, segmenter, config, torch.device("cpu"))
    assert fast_detector is not detector and fast_segmenter is not segmenter
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast_detector.modules())  # folded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.modules())
    assert all(torch.equal(v, before[k]) for k, v in detector.state_dict().items())
    with pytest.raises(ValueError, match="backend='onnx'"):
        build("onnx", detector, segmenter, config, torch.device("cpu"))
    assert BACKEND_CHOICES == ("auto",) + tuple(REGISTRY)


# ------------------------------------------------------------------ one stage interface

@pytest.mark.parametrize("backend, pipeline_type", [("reference", ReferencePipeline), ("eager", FastPipeline)])
def test_both_pipelines_take_a_batch_to_instances(models, backend, pipeline_type):
    predictor = Predictor.from_models(*models, backend=backend, config=PredictorConfig(zoom=1, **LIMITS))
    assert isinstance(predictor.pipeline, pipeline_type)
    images = [blob_image(seed=1), blob_image(120, 90, seed=2)]
    prepared = [preprocess(image, SIZE) for image in images]
    stages = []

    def timed(stage, fn, *args):
        stages.append(stage)
        return fn(*args)

    found = predictor.pipeline.run(torch.cat([p[0] for p in prepared]), [p[1] for p in prepared], timed)
    assert len(found) == 2 and all(isinstance(f, Instances) for f in found)
    assert {stage for stage in stages} == set(STAGES) - {"preprocess"}
    for image, got in zip(images, found):
        want = predictor.predict(image)
        assert got.image_size == image.shape[:2] and len(got) == len(want) > 0
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)  # a batch of 2 against batches of 1
        assert paired_mask_ious(got, want).min() >= 0.98


def test_stream_segments_at_zoom_1_whatever_predict_does(models, monkeypatch):
    """predict() zooms as the config says; stream() never does (a live feed's cost is fixed),
    and its results say so and equal those of a predictor with zoom=1."""
    monkeypatch.setattr(predictor_module, "auto_zoom", lambda *args: 2.0)
    auto = Predictor.from_models(*models, backend="eager", config=PredictorConfig(**LIMITS))
    plain = Predictor.from_models(*models, backend="eager", config=PredictorConfig(zoom=1, **LIMITS))
    frames = [blob_image(seed=s) for s in range(2)]
    assert auto.predict(frames[0]).meta["zoom"] == 2.0
    for streamed, frame in zip(auto.stream(frames), frames):
        want = plain.predict(frame)
        assert streamed.meta["zoom"] == want.meta["zoom"] == 1.0
        np.testing.assert_array_equal(streamed.masks, want.masks)


# ------------------------------------------------------------------ one export-format table

def test_export_formats_drive_the_cli_and_the_checks(models, tmp_path):
    export = make_parser()._subparsers._group_actions[0].choices["export"]
    fmt = next(a for a in export._actions if a.dest == "format")
    assert tuple(fmt.choices) == tuple(FORMATS)
    predictor = Predictor.from_models(*models, backend="eager", config=PredictorConfig(**LIMITS))
    with pytest.raises(TypeError, match="batch_size"):
        predictor.export(tmp_path / "m.pt", format="torchscript", batch_size=2)
    with pytest.raises(ValueError, match=r"\.pt2"):
        predictor.export(tmp_path / "m.pt", format="aoti")
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------ no import cycles

def _runtime_imports(path: Path) -> set:
    """Modules ``path`` imports at module level (``TYPE_CHECKING`` blocks left out), as
    dotted names relative to the package (``pipeline.fast``)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])[1:]
            modules = [node.module] if node.module else [alias.name for alias in node.names]
            names.update(".".join(base + [module]) for module in modules)
    return names


def test_pipelines_do_not_import_backends_and_export_does_not_import_the_predictor():
    for path in (PACKAGE / "pipeline").glob("*.py"):
        assert not any(name.startswith("backends") for name in _runtime_imports(path)), path.name
    for path in [PACKAGE / "export.py", PACKAGE / "config.py", *(PACKAGE / "backends").glob("*.py")]:
        assert "predictor" not in _runtime_imports(path), path.name
