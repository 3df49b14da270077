"""Dataset readers and writers: round trips through the DSB and label-image layouts."""
import cv2
import numpy as np
import pytest
import tifffile

from ancis_fast.data.layouts import (
    DSBDataset, LabelImageDataset, detect_layout, open_dataset, write_dsb, write_label_layout,
)
from ancis_fast.data.synthetic import SynthConfig, generate

CONFIG = SynthConfig(size=(96, 112), count=(10, 40))


@pytest.fixture(scope="module")
def samples():
    """A few samples covering 8-bit gray, 16-bit gray and colour images."""
    wanted = {("uint8", 3), ("uint16", 2), ("uint8", 2)}
    out, seen = [], set()
    for i in range(200):
        s = generate((2, i), CONFIG)
        kind = (s.image.dtype.name, s.image.ndim)
        if kind in wanted - seen or len(out) < 4:
            out.append(s)
            seen.add(kind)
        if seen >= wanted and len(out) >= 4:
            return out
    raise AssertionError(f"generator never produced {wanted - seen}")


@pytest.mark.parametrize("layout", ["dsb", "labels"])
def test_round_trip(tmp_path, samples, layout):
    write = write_dsb if layout == "dsb" else write_label_layout
    for s in samples:
        write(s, tmp_path)
    assert detect_layout(tmp_path) == layout
    dataset = open_dataset(tmp_path)
    assert len(dataset) == len(samples)
    by_name = {s.name: s for s in samples}
    for i in range(len(dataset)):
        read = dataset[i]
        original = by_name[read.name]
        assert read.image.dtype == original.image.dtype
        np.testing.assert_array_equal(read.image, original.image)
        np.testing.assert_array_equal(read.labels, original.labels)


def test_dsb_layout_files(tmp_path, samples):
    folder = write_dsb(samples[0], tmp_path)
    assert (folder / "images" / f"{samples[0].name}.png").is_file()
    masks = sorted((folder / "masks").iterdir())
    assert len(masks) == samples[0].labels.max()
    mask = cv2.imread(str(folder / "masks" / "1.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) <= {0, 255}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_dsb_reader_numeric_mask_order_and_rgb_masks(tmp_path):
    folder = tmp_path / "abc"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    cv2.imwrite(str(folder / "images" / "abc.png"), np.full((8, 8, 4), 9, np.uint8))  # BGRA like DSB
    for name, row in (("1", 1), ("2", 2), ("10", 5)):
        mask = np.zeros((8, 8, 3), np.uint8)
        mask[row, :] = 255
        cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    sample = DSBDataset(tmp_path)[0]
    assert sample.image.shape == (8, 8, 4)
    assert [sample.labels[r, 0] for r in (1, 2, 5)] == [1, 2, 3]  # 10.png after 2.png


def test_label_layout_matches_cellpose_and_stardist_names(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    labels = np.zeros((6, 6), np.uint16)
    labels[1:4, 1:4] = 300
    for stem, mask_stem in (("a", "a_masks"), ("b", "b")):
        tifffile.imwrite(tmp_path / "images" / f"{stem}.tif", np.full((6, 6), 1000, np.uint16))
        tifffile.imwrite(tmp_path / "masks" / f"{mask_stem}.tif", labels)
    dataset = LabelImageDataset(tmp_path)
    assert dataset.ids == ["a", "b"]
    assert dataset[0].labels.max() == 300 and dataset[0].image.dtype == np.uint16


def test_missing_and_malformed_inputs_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="neither"):
        detect_layout(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "lonely.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="lonely.png"):
        LabelImageDataset(tmp_path)


def test_existing_samples_are_kept_unless_overwritten(tmp_path, samples):
    folder = write_dsb(samples[0], tmp_path)
    marker = folder / "keep.txt"
    marker.write_text("x")
    write_dsb(samples[0], tmp_path)
    assert marker.exists()
    write_dsb(samples[0], tmp_path, overwrite=True)
    assert not marker.exists()
