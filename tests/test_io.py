"""Readers and atomic writers."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from ancis_fast import Instances
from ancis_fast.io import atomic_path, find_images, read_image, write_instances, write_label_image


def test_read_png_tiff_and_colour_order(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    tifffile.imwrite(tmp_path / "b.tif", bgr[..., ::-1].copy(), photometric="rgb")  # TIFF holds RGB
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif"), bgr)
    gray16 = np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000
    tifffile.imwrite(tmp_path / "c.tiff", gray16)
    got = read_image(tmp_path / "c.tiff")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, gray16)


def test_truncated_files_raise_value_error(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.ones((64, 64), np.uint16))
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[:100])
    with pytest.raises(ValueError, match="t.tif"):
        read_image(tmp_path / "t.tif")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ValueError, match="e.png"):
        read_image(tmp_path / "e.png")


def test_find_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.tif", "notes.txt", "sub/c.png"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_images([tmp_path])] == ["a.tif", "b.png"]
    assert [p.name for p in find_images([tmp_path], recursive=True)] == ["a.tif", "b.png", "c.png"]
    assert len(find_images([tmp_path / "b.png", tmp_path])) == 2  # de-duplicated
    with pytest.raises(FileNotFoundError, match="ghost"):
        find_images([tmp_path / "ghost"])


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_instances_all_kinds(tmp_path):
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 1:4, 1:5] = True
    masks[1, 5:9, 6:11] = True
    inst = Instances(np.array([[1, 1, 4, 5], [5, 6, 9, 11]], np.float32), np.array([0.8, 0.6], np.float32), masks)
    bgr = np.full((10, 12, 3), 30, np.uint8)
    paths = write_instances(inst, tmp_path, "img", bgr8=bgr)
    np.testing.assert_array_equal(tifffile.imread(paths["labels"]), inst.label_image())
    assert json.loads(paths["json"].read_text())["num_instances"] == 2
    assert paths["csv"].read_text().count("\n") == 3
    over = cv2.imread(str(paths["overlay"]))
    assert over.shape == (10, 12, 3) and (over[0, 0] == 30).all() and (over[2, 2] != 30).any()
    png = write_instances(inst, tmp_path, "img", ["labels"], label_format="png")["labels"]
    np.testing.assert_array_equal(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), inst.label_image())


def test_png_labels_refuse_uint32(tmp_path):
    with pytest.raises(ValueError, match=r"\.tif"):
        write_label_image(tmp_path / "l.png", np.zeros((2, 2), np.uint32))


def _square_instances():
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:8, 3:13] = True  # 6 x 10 rectangle
    return Instances(np.array([[2, 3, 8, 13], [0, 0, 1, 1]], np.float32), np.array([0.9, 0.4], np.float32), masks)


def test_imagej_rois_round_trip(tmp_path):
    roifile = pytest.importorskip("roifile", reason="roifile is the optional [io] extra")
    paths = write_instances(_square_instances(), tmp_path, "img", ["rois"])
    rois = roifile.roiread(paths["rois"])
    rois = rois if isinstance(rois, list) else [rois]
    assert len(rois) == 1  # the empty mask has no outline
    xy = rois[0].coordinates()
    assert xy[:, 0].min() == 3 and xy[:, 0].max() == 12 and xy[:, 1].min() == 2 and xy[:, 1].max() == 7


def test_geojson_polygons(tmp_path):
    paths = write_instances(_square_instances(), tmp_path, "img", ["geojson"])
    data = json.loads(paths["geojson"].read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 1
    feature = data["features"][0]
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert (ring[0] == ring[-1]).all()
    assert ring[:, 0].min() == 3 and ring[:, 0].max() == 12 and ring[:, 1].max() == 7
    assert feature["properties"]["id"] == 1 and feature["properties"]["objectType"] == "detection"


def test_iter_frames_of_stacks_and_plain_images(tmp_path):
    from ancis_fast.io import iter_frames

    stack = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    frames = list(iter_frames(tmp_path / "s.tif"))
    assert [name for name, _ in frames] == [f"_t{t:03d}_z{z:03d}" for t in range(2) for z in range(3)]
    np.testing.assert_array_equal(frames[4][1], stack[1, 1])
    with pytest.raises(ValueError, match="stack"):
        read_image(tmp_path / "s.tif")
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((3, 3), np.uint8))
    assert [name for name, _ in iter_frames(tmp_path / "p.png")] == [""]
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 9  # red in RGB
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    (name, frame), = iter_frames(tmp_path / "rgb.tif")
    assert name == "" and frame[0, 0].tolist() == [0, 0, 9]


def test_truncated_stack_names_the_file(tmp_path):
    from ancis_fast.io import iter_frames

    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 64, 64), np.uint16))
    data = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "s.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="s.tif"):
        list(iter_frames(tmp_path / "s.tif"))
    (tmp_path / "v.avi").write_bytes(b"RIFF junk")
    with pytest.raises(ValueError, match="v.avi"):
        list(iter_frames(tmp_path / "v.avi"))


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_written_table_and_label_image_list_the_same_cells(tmp_path):
    """The bundled model on the real image gives overlapping masks: the table lists exactly
    the label image's ids, each with its pixel count and centroid there (overlaps resolved
    once by score), and the RLE masks are those regions."""
    import ancis_fast
    from ancis_fast import Predictor
    from ancis_fast.instances import rle_to_mask
    from ancis_fast.io.readers import read_image

    image = read_image(Path(ancis_fast.__file__).parent / "assets" / "dsb2018_nuclei.png")
    found = Predictor(backend="eager", zoom=1).predict(image)
    assert (found.visible().areas < found.areas).any()  # some masks overlap others
    paths = write_instances(found, tmp_path, "real", ["labels", "json", "csv"])
    labels = tifffile.imread(paths["labels"])
    rows = list(csv.DictReader(paths["csv"].open()))
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert [int(r["id"]) for r in rows] == ids.tolist() == list(range(1, len(rows) + 1))
    assert [int(r["area"]) for r in rows] == counts.tolist()
    for row in rows:
        np.testing.assert_allclose([float(row["centroid_y"]), float(row["centroid_x"])],
                                   np.argwhere(labels == int(row["id"])).mean(0))
    table = json.loads(paths["json"].read_text())["instances"]
    assert [r["id"] for r in table] == ids.tolist()
    for row in table:
        np.testing.assert_array_equal(rle_to_mask(row["rle"]), labels == row["id"])
