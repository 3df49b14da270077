"""Exported pipelines (TorchScript, AOTInductor) against the eager fast path, and the
`ancis-fast export` command (seeded random weights)."""
import sys

import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.backends import tensorrt as trt
from ancis_fast.cli import main
from ancis_fast.export import OUTPUTS, ExportUnavailable, export_core, export_predictor, load_exported
from ancis_fast.ops import native_available
from ancis_fast.pipeline.fast import export_program, static_budgets
from ancis_fast.pipeline.preprocess import preprocess
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, random_models

SIZE = (128, 128)
pytestmark = pytest.mark.skipif(not native_available(), reason="exports call the compiled ancis operators")


@pytest.fixture(scope="module")
def models():
    return random_models(seed=2, mask_bias=0.3)


def _predictor(models, mode="fast", crop_sizes=(12, 24, 48)):
    config = PredictorConfig(input_size=SIZE, mode=mode, crop_sizes=crop_sizes, max_detections=64)
    return Predictor.from_models(*models, backend="eager", config=config)


def _inputs(batch=1):
    return torch.cat([preprocess(blob_image(seed=s), SIZE)[0] for s in range(batch)])


def _eager_outputs(predictor, x, shape_budgets=None):
    with torch.inference_mode():
        return predictor.pipeline.core(shape_budgets=shape_budgets)(x)


@pytest.mark.parametrize("mode, batch", [("fast", 2), ("exact", 1)])
def test_torchscript_export_round_trip(models, tmp_path, mode, batch):
    predictor = _predictor(models, mode)
    path = export_predictor(predictor, tmp_path / "model.pt")
    module = torch.jit.load(str(path))
    x = _inputs(batch)
    expected = _eager_outputs(predictor, x)
    got = module(x)
    assert int(expected[3].min()) > 0 and (expected[5] > 0).any()
    for name, a, b in zip(OUTPUTS, expected, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)
    assert tuple(module.input_size) == SIZE and module.mode == mode and module.conf_thresh == 0.3


def test_load_exported_gives_settings_and_rejects_wrong_input(models, tmp_path):
    predictor = _predictor(models)
    exported = load_exported(export_predictor(predictor, tmp_path / "model.pt"))
    assert exported.config["input_size"] == list(SIZE) and exported.config["mode"] == "fast"
    assert exported.config["seg_thresh"] == 0.5 and exported.config["box_order"] == "y1,x1,y2,x2"
    with pytest.raises(torch.jit.Error, match="expected \\[B, 3, 128, 128\\]"):
        exported(torch.zeros(1, 3, 64, 64))


def test_export_format_errors(models, tmp_path, monkeypatch):
    predictor = _predictor(models)
    with pytest.raises(ValueError, match="format='onnx'"):
        export_predictor(predictor, tmp_path / "m.onnx", format="onnx")
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_predictor(predictor, tmp_path / "m.pt", format="aoti")
    with pytest.raises(ValueError, match="NVIDIA GPUs only"):  # this CPU predictor
        export_predictor(predictor, tmp_path / "m.ep", format="tensorrt")
    monkeypatch.setattr(trt, "require_cuda", lambda device: None)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # `import torch_tensorrt` fails
    with pytest.raises(ExportUnavailable, match=r"--format tensorrt: .*pip install \.\[tensorrt\]"):
        export_predictor(predictor, tmp_path / "m.ep", format="tensorrt")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture
def weights(tmp_path, models):
    torch.save(models[0].state_dict(), tmp_path / "det.pth")
    torch.save(models[1].state_dict(), tmp_path / "seg.pth")
    return ["--weights-det", str(tmp_path / "det.pth"), "--weights-seg", str(tmp_path / "seg.pth"),
            "--input-size", "128"]


def test_cli_export_torchscript_with_runner_input(tmp_path, weights, models, capsys):
    """`export` writes a file that gives the eager pipeline's outputs, and takes --threads
    like `predict` and `evaluate` (a shared machine's cores)."""
    out, example = tmp_path / "cli.pt", tmp_path / "input.pt"
    threads = torch.get_num_threads()
    try:
        assert main(["export", "--format", "torchscript", "--out", str(out), "--example-input", str(example),
                     "--threads", "1", *weights]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "exported torchscript" in capsys.readouterr().err
    x = torch.load(example)
    assert x.shape == (1, 3, *SIZE)
    got = load_exported(out)(x)
    default = Predictor.from_models(*models, backend="eager", config=PredictorConfig(input_size=SIZE))
    for name, a, b in zip(OUTPUTS, _eager_outputs(default, x), got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)


def test_cli_export_errors_exit_2(tmp_path, weights, monkeypatch, capsys):
    assert main(["export", "--format", "tensorrt", "--out", str(tmp_path / "m.ep"), *weights]) == 2
    assert "NVIDIA GPUs only" in capsys.readouterr().err
    monkeypatch.setattr("ancis_fast.models.weights.DEFAULT_DETECTOR", tmp_path / "missing.pth")
    assert main(["export", "--out", str(tmp_path / "m.pt"), "--input-size", "128"]) == 2
    assert "bundled default model" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_strict_export_of_the_whole_static_pipeline_matches_eager(models):
    """torch.export (strict) takes detector, detection and mask stage as one graph; its
    outputs equal the eager pipeline's at the same budgets."""
    predictor = _predictor(models, crop_sizes=(16,))
    x = _inputs(2)
    core = export_core(predictor)
    budgets = static_budgets(core, x)
    program = export_program(core.core(shape_budgets=budgets), x)
    expected = _eager_outputs(predictor, x, budgets)
    with torch.inference_mode():
        got = program.module()(x)
    assert int(expected[3].min()) > 0 and (expected[5] > 0).any()
    for name, a, b in zip(OUTPUTS, expected, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)
    with pytest.raises(ValueError, match="static export"):
        export_program(core, x)  # budgets read from the data: not one graph


@pytest.mark.slow
def test_aoti_export_round_trips_the_whole_pipeline(models, tmp_path):
    """AOTInductor package of the whole static pipeline, masks included (minutes: inductor
    compiles C++)."""
    predictor = _predictor(models, crop_sizes=(16,))
    x = _inputs(1)
    path = export_predictor(predictor, tmp_path / "model.pt2", format="aoti", examples=x)
    exported = load_exported(path)
    assert exported.config["format"] == "aoti" and exported.config["input_size"] == list(SIZE)
    expected = _eager_outputs(predictor, x, exported.config["shape_budgets"])
    got = exported(x)
    assert int(expected[3][0]) > 0 and (expected[5] > 0).any()
    for name, a, b in zip(OUTPUTS, expected, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0, msg=name)
