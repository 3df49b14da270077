"""Segmenting on a Dask cluster (ancis_fast.distributed): a LocalCluster of 2 worker
processes with 1 thread each. A stand-in segmenter with an exact answer (each bright blob
is a cell) checks the block stitching, 8-bit statistics and fault handling; random-weight
models check that the files mode writes what sequential `ancis-fast predict` writes; the
bundled model checks a 4096² mosaic against single-process tiled prediction (slow)."""
import json
import os
import zlib
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from ancis_fast import Instances  # noqa: E402
from ancis_fast.cli import main  # noqa: E402
from ancis_fast.distributed import (  # noqa: E402
    PredictorSpec, built_predictors, client_for, close_client, conversion_range, open_image,
    percentiles_from_histogram, segment_files, segment_image, worker_predictor,
)
from ancis_fast.distributed_stitch import seam_groups  # noqa: E402
from ancis_fast.masks import PatchMasks  # noqa: E402
from ancis_fast.pipeline.preprocess import Normalization, to_uint8  # noqa: E402
from ancis_fast.predictor import PredictorConfig  # noqa: E402
from ancis_fast.tiling import (  # noqa: E402
    WindowGrid, best_views, predict_tiled, stitch, tile_windows, window_candidates,
)
from conftest import blob_image, random_models  # noqa: E402
from test_tiling import components, disks_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Blobs:
    """Stand-in predictor: every connected bright blob is a cell (exact, fast), tiled like
    ``Predictor.predict``."""

    config = PredictorConfig()

    def predict(self, image, tile=None, overlap=64):
        gray = to_uint8(image, self.config.normalization)
        gray = gray.max(axis=2) if gray.ndim == 3 else gray
        return components(gray) if tile is None else predict_tiled(gray, components, tile, overlap)


BLOBS = PredictorSpec.of(factory=Blobs)


class JitteredBlobs(Blobs):
    """Blobs, plus for some cells a second view shifted by up to 3 px with another score,
    drawn from the window's own pixels: windows disagree about the cells they share, so
    the stitching has duplicates to drop and parts to compare."""

    def predict(self, image, tile=None, overlap=64):
        found = super().predict(image, tile, overlap)
        rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(image).tobytes()))
        height, width = found.image_size
        boxes, scores, patches, origins = [], [], [], []
        for i in range(len(found)):
            if rng.random() < 0.5:
                (y, x), patch = found.mask_patches.origins[i] + rng.integers(-3, 4, 2), found.mask_patches.patches[i]
                top, left = max(y, 0), max(x, 0)
                piece = patch[top - y : height - y, left - x : width - x]
                if piece.any():
                    patches.append(piece)
                    origins.append((top, left))
                    boxes.append((top, left, top + piece.shape[0], left + piece.shape[1]))
                    scores.append(float(found.scores[i]) * rng.uniform(0.8, 1.2))
        if not patches:
            return found
        extra = Instances(np.array(boxes, np.float32), np.array(scores),
                          PatchMasks(patches, np.array(origins), found.image_size))
        both = Instances.cat([found, extra])
        return both[np.argsort(-both.scores, kind="stable")]


@pytest.fixture(scope="module")
def client():
    # workers are spawned with this process's sys.path, so they import the tests' stand-ins
    client = client_for(workers=2)
    yield client
    close_client(client)


def write_zarr(path, image, chunks):
    array = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=chunks, dtype=image.dtype)
    array[...] = image
    return path


def seam_mosaic(seed=0):
    """16-bit disks on a 100-count background, with disks right on the 256 px block seams."""
    on_seams = [(256, 100), (300, 512), (512, 512), (700, 256), (256, 768), (530, 900)]
    return disks_image(800, 1000, seed, on_seams).astype(np.uint16) * 40 + 100


def read_table(path):
    rows = [line.split(",") for line in Path(path).read_text().splitlines()]
    header = rows[0]
    return [dict(zip(header, row)) for row in rows[1:]]


# ------------------------------------------------------------------ no cluster

@pytest.mark.parametrize("dtype", [np.uint16, np.int8, np.uint8])
def test_percentiles_from_histogram_equal_numpy(dtype):
    info = np.iinfo(dtype)
    image = np.random.default_rng(0).integers(info.min, info.max, (301, 257), endpoint=True).astype(dtype)
    offset = int(info.min)
    counts = np.bincount((image.astype(np.int64) - offset).ravel(), minlength=1 << (8 * image.itemsize))
    q = (1.0, 37.5, 99.8, 100.0)
    np.testing.assert_allclose(percentiles_from_histogram(counts, offset, q), np.percentile(image, q), rtol=1e-12)


def test_image_sources_read_windows_in_bgr(tmp_path):
    bgr = blob_image(300, 400, seed=2)
    tifffile.imwrite(tmp_path / "slide.tif", bgr[:, :, ::-1], photometric="rgb", tile=(128, 128))
    store = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w")
    store.attrs["multiscales"] = [{"axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                                   "datasets": [{"path": "0"}]}]
    level = store.create_array("0", shape=(3, 300, 400), chunks=(3, 128, 128), dtype=np.uint8)
    level[...] = np.moveaxis(bgr[:, :, ::-1], 2, 0)  # stored RGB, channel-first
    for path in (tmp_path / "slide.tif", tmp_path / "slide.ome.zarr"):
        source = open_image(path)
        assert source.name == "slide" and source.shape == (300, 400, 3) and source.chunks == (128, 128)
        np.testing.assert_array_equal(source.read(50, 210, 130, 400), bgr[50:210, 130:400])
    write_zarr(tmp_path / "stack.zarr", np.zeros((2, 64, 64, 5), np.uint8), (1, 64, 64, 5))
    with pytest.raises(ValueError, match="stack.zarr"):
        open_image(tmp_path / "stack.zarr")


def test_each_process_builds_a_predictor_once():
    made = []

    def factory(**options):
        made.append(options)
        return object()

    first = worker_predictor(PredictorSpec.of({"input_size": (128, 128)}, factory))
    again = worker_predictor(PredictorSpec.of({"input_size": (128, 128)}, factory))
    other = worker_predictor(PredictorSpec.of({"input_size": (256, 256)}, factory))
    assert first is again and other is not first and len(made) == 2


# ------------------------------------------------------------------ huge image in blocks

def test_blocks_are_stitched_into_one_instance_per_cell(client, tmp_path):
    image = seam_mosaic()
    source = open_image(write_zarr(tmp_path / "mosaic.zarr", image, (256, 256)))
    windows = [(y, min(y + 256, 800), x, min(x + 256, 1000)) for y in range(0, 800, 256) for x in range(0, 1000, 256)]
    assert conversion_range(client, source, windows, Normalization()) == tuple(np.percentile(image, (1, 99.8)))
    result = segment_image(client, tmp_path / "mosaic.zarr", tmp_path / "out", BLOBS, overlap=48, tile=200,
                           tile_overlap=40)
    truth = components(to_uint8(image))  # the whole image at once: the exact answer
    labels = zarr.open(str(result.labels), mode="r")
    assert labels.chunks == (256, 256) and labels.shape == image.shape
    labels = labels[...]
    truth_labels = truth.label_image()
    assert result.cells == len(truth) and labels.max() == len(truth)
    assert ((labels > 0) == (truth_labels > 0)).all()
    assert len(set(zip(truth_labels[truth_labels > 0].tolist(), labels[truth_labels > 0].tolist()))) == len(truth)
    rows = read_table(result.table)
    assert [int(r["id"]) for r in rows] == list(range(1, len(truth) + 1))
    assert [int(r["area"]) for r in rows] == np.bincount(labels.ravel(), minlength=len(truth) + 1)[1:].tolist()
    assert not (tmp_path / "out" / "mosaic.blocks").exists()


def test_seam_groups_keep_overlapping_boxes_together():
    """Window 0's box 1 overlaps window 1's box 0, which overlaps window 3's box 0 (a
    chain); window 1's box 1 overlaps nothing; window 2's box 0 touches window 0's box 0
    only at an edge (no shared pixel: apart)."""
    extents = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([[55, 58, 65, 70], [200, 200, 210, 210]]),
               np.array([[0, 10, 10, 20]]), np.array([[64, 69, 80, 80]])]
    groups = seam_groups(extents)
    as_sets = sorted(sorted((k, int(j)) for k, members in g.items() for j in members) for g in groups)
    # components {0:0}, {0:1, 1:0, 3:0}, {1:1}, {2:0}; the first two both start at window 0: one group
    assert as_sets == [[(0, 0), (0, 1), (1, 0), (3, 0)], [(1, 1)], [(2, 0)]]
    assert seam_groups([np.zeros((0, 4), np.int64)] * 3) == []


def painted(instances, ids):
    """The documented label rule: higher score on top, ties to the lower id."""
    canvas = np.zeros(instances.image_size, np.int64)
    for i in sorted(range(len(instances)), key=lambda i: (instances.scores[i], -ids[i])):
        (y, x), patch = instances.mask_patches.origins[i], instances.mask_patches.patches[i]
        canvas[y : y + patch.shape[0], x : x + patch.shape[1]][patch] = ids[i]
    return canvas


def test_workers_stitch_as_one_process_does(client, tmp_path):
    """Windows that disagree about their shared cells (JitteredBlobs): the cells the
    workers keep, group by group, are those tiling.stitch keeps from the same windows in
    one pass; the labels they paint follow the documented id order and overlap rule."""
    image = to_uint8(seam_mosaic(seed=2))
    write_zarr(tmp_path / "jittered.zarr", image, (256, 256))
    spec = PredictorSpec.of(factory=JitteredBlobs)
    result = segment_image(client, tmp_path / "jittered.zarr", tmp_path / "out", spec, overlap=48, tile=200,
                           tile_overlap=40, keep_instances=True)
    assert not result.failed
    windows = tile_windows(*image.shape, result.block + 48, 48)
    found = [JitteredBlobs().predict(image[y0:y1, x0:x1], tile=200, overlap=40) for y0, x0, y1, x1 in windows]
    want = stitch(found, windows, image.shape)
    got = result.instances
    assert len(got) == len(want) == result.cells and len(want) > len(components(image))  # some doubles survive

    def cells(instances):
        return sorted((float(s), tuple(o), p.tobytes(), p.shape) for s, o, p in zip(
            instances.scores, instances.mask_patches.origins, instances.mask_patches.patches))

    assert cells(got) == cells(want)
    ids = got.meta["ids"]
    assert sorted(ids.tolist()) == list(range(1, len(got) + 1)) and (np.diff(got.scores) <= 0).all()
    labels = zarr.open(str(result.labels), mode="r")[...]
    np.testing.assert_array_equal(labels, painted(got, ids))
    # ids window by window (the window a cell's kept view comes from), by descending score within one
    grid = WindowGrid(windows, image.shape)
    settled, contested = [], []
    for k, window in enumerate(windows):
        mine, shared = grid.sort_out(window_candidates(found[k], k, window, image.shape))
        settled, contested = settled + mine, contested + shared
    kept = sorted(settled + best_views(contested), key=lambda c: (c.tile, -c.score, -c.margin, c.rank))
    by_id = np.argsort(ids)
    assert [(c.score, c.origin) for c in kept] == [(float(got.scores[i]), tuple(got.mask_patches.origins[i]))
                                                   for i in by_id]
    rows = read_table(result.table)
    assert [int(r["id"]) for r in rows] == list(range(1, len(got) + 1))
    assert [int(r["area"]) for r in rows] == got.areas[by_id].tolist()


def ngff_levels(root):
    """The label image's multiscales metadata and its levels, read back with zarr alone."""
    group = zarr.open_group(str(root), mode="r")
    assert dict(group["labels"].attrs) == {"labels": ["cells"]}
    cells = group["labels/cells"]
    multiscales = cells.attrs["multiscales"][0]
    assert multiscales["version"] == "0.4" and [a["name"] for a in multiscales["axes"]] == ["y", "x"]
    return dict(cells.attrs), [cells[d["path"]] for d in multiscales["datasets"]]


def test_labels_are_written_as_an_ngff_pyramid(client, tmp_path):
    image = to_uint8(seam_mosaic(seed=3))
    result = segment_image(client, write_zarr(tmp_path / "mosaic.zarr", image, (256, 256)), tmp_path / "out", BLOBS,
                           overlap=48, tile=200, tile_overlap=40)
    assert result.ngff == tmp_path / "out" / "mosaic_cells.ome.zarr"
    attrs, levels = ngff_levels(result.ngff)
    assert "source" not in attrs["image-label"] and attrs["image-label"]["version"] == "0.4"
    # halved until one 256 px chunk holds the image: 800x1000, 400x500, 200x250
    assert [level.shape for level in levels] == [(800, 1000), (400, 500), (200, 250)]
    scales = [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    plain = zarr.open(str(result.labels), mode="r")[...]
    assert all(np.issubdtype(level.dtype, np.integer) for level in levels)
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level[...], plain[:: 2**k, :: 2**k])


def test_ngff_labels_of_an_ome_zarr_point_at_it_without_writing_there(client, tmp_path):
    image = to_uint8(seam_mosaic(seed=4))
    source = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w", zarr_format=2)
    source.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"},
                                                               {"name": "x", "type": "space"}],
                                    "datasets": [{"path": "0", "coordinateTransformations": [
                                        {"type": "scale", "scale": [0.25, 0.5]}]},
                                        {"path": "1", "coordinateTransformations": [
                                            {"type": "scale", "scale": [0.5, 1.0]}]}]}]
    source.create_array("0", shape=image.shape, chunks=(256, 256), dtype=np.uint8)[...] = image
    source.create_array("1", shape=(400, 500), chunks=(256, 256), dtype=np.uint8)[...] = image[::2, ::2]
    before = sorted(str(p) for p in (tmp_path / "slide.ome.zarr").rglob("*"))
    result = segment_image(client, tmp_path / "slide.ome.zarr", tmp_path, BLOBS, overlap=48, tile=200,
                           tile_overlap=40)  # outputs beside the input
    named_like_an_output = write_zarr(tmp_path / "other_cells.ome.zarr", image, (256, 256))
    with pytest.raises(ValueError, match="would replace it"):
        segment_image(client, named_like_an_output, tmp_path, BLOBS, name="other")
    assert zarr.open(str(named_like_an_output), mode="r").shape == image.shape
    assert sorted(str(p) for p in (tmp_path / "slide.ome.zarr").rglob("*")) == before
    attrs, levels = ngff_levels(result.ngff)
    label_group = result.ngff / "labels" / "cells"
    assert (label_group / attrs["image-label"]["source"]["image"]).resolve() == (tmp_path / "slide.ome.zarr").resolve()
    assert [level.shape for level in levels] == [(800, 1000), (400, 500)]  # as many levels as the image
    scales = [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]
    assert scales == [[0.25, 0.5], [0.5, 1.0]]
    truth = components(image)
    assert result.cells == len(truth) and levels[0][...].max() == len(truth)


def test_tissue_is_found_on_a_low_resolution_view():
    """A 40x48 view shrunk 4x from 160x192: a bright patch on a dark background ("dark":
    fluorescence), and the same inverted ("bright": bright-field); a window is kept when
    the mask grown by one view pixel reaches it."""
    from ancis_fast.background import tissue_mask, windows_with_tissue

    view = np.full((40, 48), 10, np.uint8)
    view[5:9, 30:40] = 200
    for background, shown in (("dark", view), ("bright", 255 - view)):
        mask = tissue_mask(shown, background)
        assert mask.sum() == 40 and mask[5:9, 30:40].all()
    windows = [(0, 160, 0, 100),    # view columns 0-24: no tissue (it starts at 30)
               (0, 160, 100, 192),  # 25-47: holds it
               (40, 160, 0, 192),   # view rows 10-39: the tissue ends at row 8, grown to 9: not reached
               (0, 160, 0, 116),    # image columns 0-115, view 0-28: the grown mask starts at 29
               (0, 160, 0, 117)]    # image column 116 lies in view column 29: reached
    assert windows_with_tissue(tissue_mask(view, "dark"), 4, windows) == [False, True, False, False, True]
    with pytest.raises(ValueError, match="background"):
        tissue_mask(view, "grey")


def test_windows_without_tissue_are_not_segmented(client, tmp_path):
    image = np.zeros((800, 1000), np.uint8)
    image[:, :300] = disks_image(800, 300, seed=5)  # cells on the left only
    image[:, 290:] = 0
    path = write_zarr(tmp_path / "left.zarr", image, (256, 256))
    result = segment_image(client, path, tmp_path / "out", BLOBS, overlap=48, tile=200, tile_overlap=40,
                           background="dark")
    windows = tile_windows(*image.shape, result.block + 48, 48)
    empty = sum(not image[y0:y1, x0:x1].any() for y0, x0, y1, x1 in windows)
    assert result.skipped == empty == 6 and result.blocks == 9
    truth = components(image)
    labels = zarr.open(str(result.labels), mode="r")[...]
    assert result.cells == len(truth) and ((labels > 0) == (image > 0)).all()
    with pytest.raises(ValueError, match="background"):
        segment_image(client, path, tmp_path / "out", BLOBS, background="white")


def corrupt_a_chunk(path):
    """Overwrite the stored chunk (1, 1) with junk; returns a function that restores it."""
    chunk = next(p for p in Path(path).rglob("*") if p.is_file() and p.parent.name == "1" and p.name == "1")
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a compressed chunk")
    return lambda: chunk.write_bytes(good)


def test_failing_blocks_are_named_and_resume_recomputes_only_them(client, tmp_path):
    out = tmp_path / "out"
    path = write_zarr(tmp_path / "16bit.zarr", seam_mosaic(), (256, 256))
    corrupt_a_chunk(path)
    unreadable = segment_image(client, path, out, BLOBS)  # no whole-image statistics: nothing segmented
    assert [name for name, _ in unreadable.failed] == ["16bit statistics of block_y256-512_x256-512"]
    image = to_uint8(seam_mosaic(seed=1))  # 8-bit: no statistics needed, the other blocks go on
    path = write_zarr(tmp_path / "mosaic.zarr", image, (256, 256))
    restore = corrupt_a_chunk(path)
    broken = segment_image(client, path, out, BLOBS, overlap=48, tile=200, tile_overlap=40, resume=True)
    assert broken.failed and broken.labels is None and not (out / "mosaic_labels.zarr").exists()
    assert all(name.startswith("mosaic block_y") for name, _ in broken.failed)
    saved = sorted(p.name for p in (out / "mosaic.blocks").glob("*.pkl"))
    assert len(saved) == broken.blocks - len(broken.failed) > 0
    restore()
    fixed = segment_image(client, path, out, BLOBS, overlap=48, tile=200, tile_overlap=40, resume=True)
    assert not fixed.failed and fixed.reused == len(saved) and fixed.cells == len(components(to_uint8(image)))
    assert segment_image(client, path, out, BLOBS, resume=True).already_done


# ------------------------------------------------------------------ many files

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    images = root / "images"
    images.mkdir()
    for i in range(8):
        cv2.imwrite(str(images / f"img{i}.png"), blob_image(120 + 8 * i, 150, cells=10, seed=i))
    detector, segmenter = random_models("resnet18")
    torch.save(detector.state_dict(), root / "det.pth")
    torch.save(segmenter.state_dict(), root / "seg.pth")
    options = ["--weights-det", str(root / "det.pth"), "--weights-seg", str(root / "seg.pth"), "--backbone",
               "resnet18", "--input-size", "128", "--backend", "eager", "--zoom", "1", "--max-detections", "40",
               "--quiet"]
    assert main(["predict", str(images), "--out", str(root / "sequential")] + options) == 0
    return images, options, root / "sequential"


def assert_same_outputs(got, want):
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names and len(names) == 8 * 4
    for name in names:
        if name.endswith(".tif"):
            np.testing.assert_array_equal(tifffile.imread(got / name), tifffile.imread(want / name))
        elif name.endswith(".png"):
            np.testing.assert_array_equal(cv2.imread(str(got / name)), cv2.imread(str(want / name)))
        else:
            assert (got / name).read_text() == (want / name).read_text(), name


def test_folder_equals_sequential_predict_and_loads_the_model_once(client, folder, tmp_path):
    images, options, sequential = folder
    before = client.run(built_predictors)
    assert main(["predict", str(images), "--out", str(tmp_path / "out"), "--scheduler", client.scheduler.address]
                + options) == 0
    assert_same_outputs(tmp_path / "out", sequential)
    built = client.run(built_predictors)
    assert [built[w] - before[w] for w in built] == [1, 1]  # 8 files, one predictor per worker


@pytest.mark.slow
def test_a_killed_worker_loses_nothing(client, folder, tmp_path):
    images, options, sequential = folder
    spec = PredictorSpec.of(dict(detector_weights=options[1], segmenter_weights=options[3], backbone="resnet18",
                                 input_size=(128, 128), backend="eager", zoom=1.0, max_detections=40))
    paths = sorted(images.iterdir())
    done = {}
    run = threading.Thread(target=lambda: done.update(results=segment_files(client, paths, tmp_path / "out", spec)))
    run.start()
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob("*.csv")) and time.monotonic() < deadline:
        time.sleep(0.05)
    finished_before_kill = len(list((tmp_path / "out").glob("*.csv")))
    os.kill(next(iter(client.run(os.getpid).values())), signal.SIGKILL)
    run.join(timeout=300)
    assert 0 < finished_before_kill < 8
    assert [r.error for r in done["results"]] == [""] * 8
    assert_same_outputs(tmp_path / "out", sequential)


def test_a_bad_file_is_reported_and_the_rest_finish(client, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"ok{i}.png"), disks_image(120, 140, seed=i))
    (images / "broken.png").write_bytes(b"\x89PNG truncated")
    results = segment_files(client, sorted(images.iterdir()), tmp_path / "out", BLOBS, save=["csv"], resume=True)
    errors = {Path(r.path).name: r.error for r in results}
    assert "broken.png" in errors["broken.png"] and all(not errors[f"ok{i}.png"] for i in range(3))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok0.csv", "ok1.csv", "ok2.csv"]
    again = segment_files(client, sorted(images.iterdir()), tmp_path / "out", BLOBS, save=["csv"], resume=True)
    assert [r.skipped for r in again] == [0, 1, 1, 1]  # resume: finished outputs are reused


# ------------------------------------------------------------------ the bundled model at scale

@pytest.mark.slow
def test_4096_image_agrees_with_single_process_tiling(tmp_path):
    """benchmarks/distributed_scaling.py's comparison: a 16-bit synthetic 4096²
    image in 1024 px zarr chunks, on 2 workers and in one process with predict(tile=512):
    cell counts within 1 %, no two instances with mask IoU over 0.3, and the true cells that
    a block window's edge crosses found as often as one process finds them."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "distributed_scaling.py"
    spec = importlib.util.spec_from_file_location("distributed_scaling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.compare(tmp_path, size=4096, chunk=1024, workers=(2,))
    print(json.dumps(report, indent=1))  # the figures docs/large-images.md quotes (pytest -rP shows them)
    run = report["workers2"]
    assert run["count_diff"] <= 0.01
    # no cell twice: no two instances with mask IoU over 0.3 (tiling.DUPLICATE_IOU), in either run
    assert run["pairs_over_duplicate_iou"] == 0 and report["single"]["pairs_over_duplicate_iou"] == 0
    assert run["seam_cells"] > 50 and run["seam_cells_found"] >= run["seam_cells_found_single"] - 0.01 * run["seam_cells"]


def test_cli_segments_a_zarr_image_in_blocks(client, folder, tmp_path, capsys):
    _, options, _ = folder
    image = blob_image(300, 420, cells=20, seed=5)
    write_zarr(tmp_path / "slide.zarr", image[:, :, ::-1].copy(), (256, 256, 3))  # stored RGB
    command = ["predict", str(tmp_path / "slide.zarr"), "--out", str(tmp_path / "out"), "--scheduler",
               client.scheduler.address, "--tile", "256", "--overlap", "32", "--resume"] + options
    assert main(command) == 0
    labels = zarr.open(str(tmp_path / "out" / "slide_labels.zarr"), mode="r")
    assert labels.shape == (300, 420) and labels.chunks == (256, 256)
    rows = read_table(tmp_path / "out" / "slide.csv")
    ids = np.unique(labels[...])
    assert [int(r["id"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len(ids) > 1 and ids.max() <= len(rows)  # ids of the table (cells hidden under better ones aside)
    assert main(command) == 0 and "already done" in capsys.readouterr().err


def test_cli_skips_blocks_without_tissue(client, folder, tmp_path, capsys):
    _, options, _ = folder
    image = np.zeros((300, 600, 3), np.uint8)
    image[:, :200] = blob_image(300, 200, cells=10, seed=6)  # blocks start at x = 0, 224 and 344
    write_zarr(tmp_path / "left.zarr", image[:, :, ::-1].copy(), (256, 256, 3))
    command = ["predict", str(tmp_path / "left.zarr"), "--out", str(tmp_path / "out"), "--tile", "256", "--overlap",
               "32", "--background", "dark"] + options
    assert main(command + ["--scheduler", client.scheduler.address]) == 0
    assert "6 block(s) (0 reused, 4 without tissue)" in capsys.readouterr().err
    assert main(command) == 2 and "--background" in capsys.readouterr().err
