"""TensorRT backend: cache keys, Input specs, errors, and the documented torch_tensorrt calls
(checked with a recording fake module); the real engine where torch_tensorrt and CUDA exist."""
import sys
import types

import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.backends import tensorrt as trt
from ancis_fast.export import export_predictor
from ancis_fast.pipeline.preprocess import preprocess
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, matched_detections, random_models

SIZE = (128, 128)
VERSIONS = {"torch": "2.14.1", "torch_tensorrt": "2.14.0", "tensorrt": "10.13"}
KEY_ARGS = dict(weights="ab" * 32, input_size=(512, 512), batch_range=(1, 1, 8), precision="fp16",
                versions=VERSIONS, gpu="NVIDIA H100 sm_90")


def test_cache_key_is_stable_and_sensitive():
    key = trt.cache_key(**KEY_ARGS)
    assert key == trt.cache_key(**dict(KEY_ARGS, versions=dict(reversed(list(VERSIONS.items())))))
    changes = [dict(weights="cd" * 32), dict(input_size=(512, 640)), dict(batch_range=(1, 4, 8)),
               dict(precision="fp32"), dict(versions=dict(VERSIONS, tensorrt="10.14")),
               dict(versions=dict(VERSIONS, torch="2.15.0")), dict(gpu="NVIDIA A100 sm_80")]
    keys = {trt.cache_key(**dict(KEY_ARGS, **change)) for change in changes}
    assert key not in keys and len(keys) == len(changes)


def test_weights_digest_follows_the_weights(models):
    detector = models[0]
    digest = trt.weights_digest(detector)
    assert digest == trt.weights_digest(detector)
    changed = random_models(seed=1)[0]
    assert trt.weights_digest(changed) != digest
    head = torch.nn.Conv2d(2, 2, 1)
    other = torch.nn.Conv2d(2, 2, 1)
    other.load_state_dict(head.state_dict())
    assert trt.weights_digest(head) == trt.weights_digest(other)
    with torch.no_grad():
        other.weight[0, 0, 0, 0] += 1e-6
    assert trt.weights_digest(head) != trt.weights_digest(other)


def test_runtime_versions_name_every_component():
    versions = trt.runtime_versions()
    assert versions["torch"] == torch.__version__ and {"torch_tensorrt", "tensorrt"} <= set(versions)


class _FakeInput:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def _fake_torch_tensorrt(calls):
    """A stand-in for torch_tensorrt that records compile() and returns the module as is;
    save/load go through torch.save/torch.load."""
    fake = types.ModuleType("torch_tensorrt")
    fake.__version__ = "0.0-fake"
    fake.Input = _FakeInput

    def compile(module, **kwargs):
        calls.append(kwargs)
        return module

    def dynamo_compile(program, **kwargs):
        calls.append(dict(kwargs, program=program))
        return program.module()

    def save(module, path, **kwargs):
        assert kwargs["output_format"] == "exported_program" and kwargs["arg_inputs"]
        if isinstance(kwargs["arg_inputs"][0], torch.Tensor):  # retrace=True: export again with example inputs
            torch.export.save(torch.export.export(module, tuple(kwargs["arg_inputs"])), path)
        else:
            torch.save(module, path)

    def load(path):
        try:
            return torch.export.load(path)
        except Exception:  # not an exported program: a detector saved by torch.save
            return torch.load(path, weights_only=False)

    fake.compile, fake.save = compile, save
    fake.dynamo = types.SimpleNamespace(compile=dynamo_compile)
    fake.load = load
    return fake


def test_input_spec_spans_the_batch_range():
    spec = trt.input_spec(_fake_torch_tensorrt([]), (256, 320), (1, 2, 8), torch.float16)
    assert spec.kwargs == dict(min_shape=(1, 3, 256, 320), opt_shape=(2, 3, 256, 320), max_shape=(8, 3, 256, 320),
                               dtype=torch.float16, name="x")
    with pytest.raises(ValueError, match="batch_range"):
        trt.input_spec(_fake_torch_tensorrt([]), (256, 320), (4, 2, 8), torch.float16)


def test_missing_package_says_how_to_install(monkeypatch, models):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # makes `import torch_tensorrt` fail
    with pytest.raises(ImportError, match=r"pip install \.\[tensorrt\].*NVIDIA GPU") as info:
        trt.import_torch_tensorrt()
    assert isinstance(info.value, trt.TensorRTUnavailableError)
    monkeypatch.setattr(trt, "require_cuda", lambda device: None)
    with pytest.raises(trt.TensorRTUnavailableError):
        Predictor.from_models(*models, backend="tensorrt", config=PredictorConfig(input_size=SIZE))


def test_needs_cuda(models):
    with pytest.raises(ValueError, match="NVIDIA GPUs only"):
        Predictor.from_models(*models, backend="tensorrt", device="cpu", config=PredictorConfig(input_size=SIZE))


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """The fake torch_tensorrt installed, CUDA checks bypassed (CPU), cache in tmp_path."""
    calls = []
    monkeypatch.setitem(sys.modules, "torch_tensorrt", _fake_torch_tensorrt(calls))
    monkeypatch.setattr(trt, "require_cuda", lambda device: None)
    monkeypatch.setattr(trt, "gpu_name", lambda device: "Fake GPU sm_00")
    monkeypatch.setenv(trt.CACHE_ENV, str(tmp_path / "cache"))
    return calls


def test_backend_calls_the_documented_api_and_caches(fake_trt, models, tmp_path):
    """Exact mode: the detector alone is the engine (the mask stage plans on the host)."""
    config = PredictorConfig(input_size=SIZE, mode="exact")
    first = Predictor.from_models(*models, backend="tensorrt", config=config)
    assert len(fake_trt) == 1
    call = fake_trt[0]
    assert call["ir"] == "dynamo" and call["enabled_precisions"] == {torch.float32}
    assert "torch.ops.ancis.detect.default" in call["torch_executed_ops"]
    (spec,) = call["inputs"]
    assert spec.kwargs["min_shape"] == (1, 3, *SIZE) and spec.kwargs["max_shape"] == (8, 3, *SIZE)
    detector = first.pipeline.detector
    assert isinstance(detector, trt.TensorRTDetector) and detector.path.parent == tmp_path / "cache"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [detector.path.name]  # no temp file left

    second = Predictor.from_models(*models, backend="tensorrt", config=config)
    assert len(fake_trt) == 1 and second.pipeline.detector.path == detector.path  # loaded, not compiled
    eager = Predictor.from_models(*models, backend="eager", config=config)
    image = blob_image(seed=1)
    a, b = eager.predict(image), second.predict(image)
    np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)

    Predictor.from_models(*models, backend="tensorrt", config=PredictorConfig(input_size=SIZE, precision="bf16",
                                                                             mode="exact"))
    assert len(fake_trt) == 2 and fake_trt[1]["enabled_precisions"] == {torch.bfloat16}
    assert fake_trt[1]["inputs"][0].kwargs["dtype"] == torch.bfloat16


def test_batches_above_the_engine_maximum_run_in_chunks(fake_trt, models):
    predictor = Predictor.from_models(*models, backend="tensorrt",
                                      config=PredictorConfig(input_size=SIZE, mode="exact"))
    predictor.pipeline.detector.max_batch = 2
    images = [blob_image(seed=s) for s in range(3)]
    batched = predictor.predict_batch(images, batch_size=3)
    for image, got in zip(images, batched):
        matched_detections(got, predictor.predict(image), atol=1e-3)


def test_export_tensorrt_compiles_the_whole_static_pipeline(fake_trt, models, tmp_path):
    """--format tensorrt: the static pipeline as one exported program, compiled by
    torch_tensorrt.dynamo.compile with the native operators left to PyTorch; the file's
    outputs are the AOTInductor export's (with the fake, the exported graph itself)."""
    from ancis_fast.export import OUTPUTS, static_core
    from ancis_fast.pipeline.fast import static_budgets

    config = PredictorConfig(input_size=SIZE, max_detections=64)
    predictor = Predictor.from_models(*models, backend="eager", config=config)
    x = torch.cat([preprocess(blob_image(seed=s), SIZE)[0] for s in range(2)])
    out = export_predictor(predictor, tmp_path / "out" / "pipeline.ep", format="tensorrt", batch_size=2, examples=x)
    assert out.is_file() and len(fake_trt) == 1
    call = fake_trt[0]
    assert call["arg_inputs"][0].shape == (2, 3, *SIZE) and call["enabled_precisions"] == {torch.float32}
    assert call["torch_executed_ops"] == set(trt.NATIVE_OPS)
    graph_ops = {str(node.target) for node in call["program"].graph.nodes if node.op == "call_function"}
    assert {"ancis.detect.default", "ancis.crop_and_resize.default"} <= graph_ops  # the mask stage is in it
    static = static_core(predictor, 2, examples=x, fmt="tensorrt")
    assert static.shape_budgets == static_budgets(predictor.pipeline.core(), x)
    engine = torch.export.load(out).module()
    with torch.inference_mode():
        for name, got, want in zip(OUTPUTS, engine(x), static(x)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)
    again = export_predictor(predictor, tmp_path / "again.ep", format="tensorrt", batch_size=2, examples=x)
    assert again.read_bytes() == out.read_bytes() and len(fake_trt) == 1  # from the engine cache


def test_corrupt_cache_file_is_rebuilt(fake_trt, models):
    config = PredictorConfig(input_size=SIZE, mode="exact")
    path = Predictor.from_models(*models, backend="tensorrt", config=config).pipeline.detector.path
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="rebuilding"):
        Predictor.from_models(*models, backend="tensorrt", config=config)
    assert len(fake_trt) == 2


def test_fast_mode_runs_the_whole_pipeline_as_one_engine_per_batch_size(fake_trt, models):
    """Fast mode: the static pipeline (detector, detection, mask decoder) compiled once per
    batch size, with boxes per crop shape from its first batch (2x headroom); results equal
    the eager backend's; a batch needing more boxes of a shape than the engine holds runs
    stage by stage instead, with the same result."""
    config = PredictorConfig(input_size=SIZE, max_candidates=200, max_detections=500, zoom=1)
    engine = Predictor.from_models(*models, backend="tensorrt", config=config)
    eager = Predictor.from_models(*models, backend="eager", config=config)
    assert not fake_trt  # built on the first batch, not before
    images = [blob_image(seed=s) for s in range(3)]
    for image in images:
        got, want = engine.predict(image), eager.predict(image)
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
        np.testing.assert_array_equal(got.masks, want.masks)
    engine.predict_batch(images[:2], batch_size=2)
    assert len(fake_trt) == 2 and sorted(engine.pipeline.static_graphs) == [1, 2]  # one per batch size
    assert "torch.ops.ancis.crop_and_resize.default" in fake_trt[0]["torch_executed_ops"]

    graph, budgets = engine.pipeline.static_graphs[1]
    calls = []
    engine.pipeline.static_graphs[1] = (lambda x: calls.append(x) or graph(x), [0] * len(budgets))
    got, want = engine.predict(images[0]), eager.predict(images[0])
    assert len(calls) == 1 and len(got) == len(want)  # tried, too small, then stage by stage
    np.testing.assert_array_equal(got.masks, want.masks)


def _real_tensorrt_missing() -> str:
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"torch_tensorrt cannot be imported ({type(exc).__name__}: {exc}); pip install .[tensorrt]"
    return "" if torch.cuda.is_available() else "CUDA is not available (TensorRT needs an NVIDIA GPU)"


@pytest.mark.cuda
@pytest.mark.skipif(bool(_real_tensorrt_missing()), reason=_real_tensorrt_missing() or "ok")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_real_tensorrt_matches_eager(tmp_path, monkeypatch, precision, mode):
    monkeypatch.setenv(trt.CACHE_ENV, str(tmp_path))
    models = random_models()
    config = PredictorConfig(input_size=SIZE, mode=mode, max_candidates=200, max_detections=500)
    eager = Predictor.from_models(*models, backend="eager", device="cuda", config=config)
    engine = Predictor.from_models(*models, backend="tensorrt", device="cuda",
                                   config=PredictorConfig(**dict(config.to_dict(), precision=precision)))
    image = blob_image(seed=0)
    a, b = eager.predict(image), engine.predict(image)
    assert abs(len(a) - len(b)) <= 0.05 * len(a)
    if precision == "fp32":
        np.testing.assert_allclose(b.boxes, a.boxes, atol=0.05)  # TensorRT may use TF32
    again = Predictor.from_models(*models, backend="tensorrt", device="cuda", config=engine.config)
    assert len(again.predict(image)) == len(b)
    assert len(list(tmp_path.glob("*.ep"))) == 1  # the second predictor loaded the cached engine
