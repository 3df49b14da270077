"""``backend="compile"``: torch.compile'd detector and mask decoder against eager."""
import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.backends.compile import CompiledDetector, CompiledSegmenter, detector_mode
from ancis_fast.models.segmenter import Segmenter
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, matched_detections, paired_mask_ious, random_models

SIZE = (128, 128)


@pytest.mark.slow  # ~30 s of CPU compiling (11 min wall on the shared CI machine)
def test_decoder_compiles_once_per_step():
    """Varying box counts (1 included) and crop sizes (square or not) reuse one graph per
    decoder step used (here level 0's stage and the head)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    segmenter = Segmenter((64, 16, 16, 16, 16)).eval()
    compiled = CompiledSegmenter(segmenter, torch.device("cpu"))
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for k, (h, w) in [(3, (8, 8)), (1, (12, 8)), (5, (9, 14)), (2, (16, 16))]:
            crops = [torch.randn(k, 64, h, w), torch.randn(k, 16, (h + 1) // 2, (w + 1) // 2)]
            torch.testing.assert_close(compiled(crops), segmenter(crops), atol=1e-4, rtol=1e-4)
            one_level = compiled(crops[:1])
            assert one_level.shape == (k, 1, h, w)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before == 2


@pytest.mark.slow  # compiling the ResNet-50 detector takes minutes on a small CPU
def test_compile_backend_equals_eager():
    models = random_models(seed=2, mask_bias=0.3)
    config = PredictorConfig(input_size=SIZE)
    eager = Predictor.from_models(*models, backend="eager", config=config)
    compiled = Predictor.from_models(*models, backend="compile", config=config)
    assert isinstance(compiled.pipeline.detector, CompiledDetector)
    assert isinstance(compiled.pipeline.segmenter, CompiledSegmenter)
    for seed in range(2):
        image = blob_image(seed=seed)
        a, b = eager.predict(image), compiled.predict(image)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)  # original pixels: ~1e-4 in network units
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
        assert paired_mask_ious(a, b).mean() >= 0.99


def test_detector_mode_defaults_and_environment_override(monkeypatch):
    monkeypatch.delenv("ANCIS_COMPILE_MODE", raising=False)
    assert detector_mode(torch.device("cuda")) == "max-autotune" and detector_mode(torch.device("cpu")) is None
    monkeypatch.setenv("ANCIS_COMPILE_MODE", "reduce-overhead")
    assert detector_mode(torch.device("cuda")) == "reduce-overhead"
    monkeypatch.setenv("ANCIS_COMPILE_MODE", "default")
    assert detector_mode(torch.device("cuda")) is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_compile_backend_on_a_gpu_replays_the_static_pipeline_as_cuda_graphs():
    models = random_models(seed=2, mask_bias=0.3)
    config = PredictorConfig(input_size=SIZE, max_candidates=200, max_detections=500, zoom=1)
    eager = Predictor.from_models(*models, backend="eager", device="cuda", config=config)
    graphed = Predictor.from_models(*models, backend="compile", device="cuda", config=config)
    images = [blob_image(seed=s) for s in range(3)]
    for batch in (images[:1], images):
        for a, b in zip(eager.predict_batch(batch, batch_size=len(batch)),
                        graphed.predict_batch(batch, batch_size=len(batch))):
            assert len(a) == len(b) > 0
            assert paired_mask_ious(b, matched_detections(b, a, atol=1e-3)).mean() >= 0.99
    assert sorted(graphed.pipeline.static_graphs) == [1, 3]
