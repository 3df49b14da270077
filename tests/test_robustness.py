"""Fuzzed and extreme inputs: every image either segments or raises a clear ValueError."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ancis_fast import Instances, Predictor
from ancis_fast.io import write_instances
from ancis_fast.masks import PatchMasks
from ancis_fast.pipeline.preprocess import preprocess
from ancis_fast.predictor import PredictorConfig
from ancis_fast.tiling import predict_tiled

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.complex64])
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
    st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 6)),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5),
)


def _valid(shape, dtype) -> bool:
    two_d = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
    return two_d and min(shape[:2]) > 0 and dtype not in (np.bool_, np.complex64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=SHAPES, dtype=DTYPES)
def test_preprocess_accepts_or_rejects_clearly(data, shape, dtype):
    if dtype in (np.float32, np.float64):
        elements = st.floats(allow_nan=True, allow_infinity=True, width=32)
    elif dtype == np.complex64:
        elements = st.complex_numbers(max_magnitude=10, width=64)
    else:
        elements = None
    image = data.draw(hnp.arrays(dtype, shape, elements=elements))
    finite = not np.issubdtype(image.dtype, np.floating) or np.isfinite(image).all()
    if _valid(shape, dtype) and finite:
        batch, size = preprocess(image, (64, 64))
        assert batch.shape == (1, 3, 64, 64) and size == shape[:2]
        assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    else:
        with pytest.raises(ValueError):
            preprocess(image, (64, 64))


@pytest.fixture(scope="module")
def small_predictor(models):
    return Predictor.from_models(*models, backend="reference", config=PredictorConfig(input_size=(64, 64)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32]),
                        st.tuples(st.integers(1, 90), st.integers(1, 90)),
                        elements=st.integers(0, 255)))
def test_predict_never_crashes_on_small_images(small_predictor, image):
    inst = small_predictor.predict(image)
    assert inst.image_size == image.shape
    labels = inst.label_image()
    assert labels.shape == image.shape and int(labels.max()) <= len(inst)


@pytest.mark.parametrize("value", [0, 255])
def test_constant_and_one_pixel_images(small_predictor, value):
    for shape in [(1, 1), (1, 500), (50, 50, 3)]:
        inst = small_predictor.predict(np.full(shape, value, np.uint8))
        assert inst.image_size == shape[:2]


def test_huge_image_is_tiled_without_allocating_it():
    image = np.broadcast_to(np.uint8(0), (10_000, 10_000))  # 100 MB of pixels, none in memory
    seen = []

    def record(tile):
        seen.append(tile.shape)
        return Instances.empty(tile.shape[:2])

    result = predict_tiled(image, record, tile=512, overlap=64)
    assert len(result) == 0 and result.image_size == (10_000, 10_000)
    per_axis = -(-(10_000 - 512) // (512 - 64)) + 1  # ceil(9488 / 448) strides + the tile flush with the edge
    assert per_axis == 23 and len(seen) == per_axis**2 and set(seen) == {(512, 512)}


def _grid_instances(n, image_size=(1000, 1000), seed=0):
    rng = np.random.default_rng(seed)
    per_row = int(np.ceil(np.sqrt(n)))
    step = image_size[0] // per_row
    origins = np.array([((i // per_row) * step, (i % per_row) * step) for i in range(n)])
    patches = [rng.random((step - 2, step - 2)) > 0.3 for _ in range(n)]
    boxes = np.concatenate([origins, origins + step - 2], axis=1).astype(np.float32)
    scores = np.sort(rng.random(n))[::-1].astype(np.float32)
    return Instances(boxes, scores, PatchMasks(patches, origins, image_size))


@pytest.mark.parametrize("n", [0, 5000])
def test_zero_and_5000_cells_write_everything(tmp_path, n):
    inst = _grid_instances(n) if n else Instances.empty((1000, 1000))
    bgr = np.zeros((1000, 1000, 3), np.uint8)
    paths = write_instances(inst, tmp_path, "many", ["labels", "json", "csv", "overlay", "geojson"], bgr8=bgr)
    labels = inst.label_image()
    assert int(labels.max()) == n and len(np.unique(labels)) == n + 1
    assert paths["csv"].read_text().count("\n") == n + 1


def test_wrong_checkpoint_files(tmp_path, models):
    import torch

    from ancis_fast.models import CheckpointError

    detector, segmenter = models
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pt")
    torch.save(detector.state_dict(), tmp_path / "det.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="odd.pt"):
        Predictor(tmp_path / "det.pt", tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="text.pt"):
        Predictor(tmp_path / "text.pt", tmp_path / "det.pt")
    with pytest.raises(CheckpointError, match="detector checkpoint given as the segmenter"):
        Predictor(tmp_path / "det.pt", tmp_path / "det.pt")
