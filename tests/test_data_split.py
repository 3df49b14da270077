"""Image classes by appearance and the seeded, stratified train/validation split."""
from collections import Counter

import numpy as np
import pytest

from ancis_fast.data.classes import BRIGHTFIELD, FLUORESCENCE, TISSUE, appearance, image_class
from ancis_fast.data.layouts import open_dataset, write_label_layout
from ancis_fast.data.sample import Sample
from ancis_fast.data.split import select_split, stratified_split
from conftest import DSB2018, needs_dsb2018


def _discs(shape, background, nucleus, seed=0):
    """``shape`` image of ``background`` colour with a few discs of ``nucleus`` colour,
    plus mild noise, and its label map."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    image = np.empty((height, width, len(background)), np.float64)
    image[:] = background
    labels = np.zeros(shape, np.int32)
    for k in range(1, 6):
        cy, cx = rng.integers(10, height - 10), rng.integers(10, width - 10)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        image[disc] = nucleus
        labels[disc] = k
    image += rng.normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return (image[:, :, 0] if image.shape[2] == 1 else image), labels


def test_fluorescence_tissue_and_brightfield_by_look():
    gray_dark, _ = _discs((64, 80), [15], [200])
    assert image_class(gray_dark) == FLUORESCENCE
    blue_dapi, _ = _discs((64, 80), [20, 5, 5], [230, 60, 40])  # BGR: blue nuclei on black, colour but dark
    assert image_class(blue_dapi) == FLUORESCENCE
    he_tissue, _ = _discs((64, 80), [215, 180, 230], [160, 60, 120])  # BGR pink background, purple nuclei
    assert image_class(he_tissue) == TISSUE
    gray_light, _ = _discs((64, 80), [225], [90])
    assert image_class(gray_light) == BRIGHTFIELD
    assert image_class(np.dstack([gray_light] * 3)) == BRIGHTFIELD  # gray stored as 3 channels


def test_sixteen_bit_images_are_classed_after_their_8_bit_conversion():
    dark, _ = _discs((64, 80), [15], [200])
    assert image_class(dark.astype(np.uint16) * 250) == FLUORESCENCE
    brightness, spread = appearance(dark.astype(np.uint16) * 250)
    assert brightness < 60 and spread == 0.0


def _ids(counts):
    ids, classes = [], []
    for name, n in counts.items():
        ids += [f"{name[:3]}{k:03d}" for k in range(n)]
        classes += [name] * n
    return ids, classes


def test_split_is_stratified_disjoint_and_complete():
    ids, classes = _ids({FLUORESCENCE: 100, TISSUE: 20, BRIGHTFIELD: 5})
    split = stratified_split(ids, classes, seed=7)
    assert set(split["train"]).isdisjoint(split["val"])
    assert sorted(split["train"] + split["val"]) == sorted(ids)
    of = dict(zip(ids, classes))
    # 15 % rounded, but at least 3 per class
    assert Counter(of[i] for i in split["val"]) == {FLUORESCENCE: 15, TISSUE: 3, BRIGHTFIELD: 3}


def test_split_is_reproducible_and_depends_on_the_seed_only():
    ids, classes = _ids({FLUORESCENCE: 60, TISSUE: 10})
    first = stratified_split(ids, classes, seed=3)
    assert stratified_split(ids[::-1], classes[::-1], seed=3) == first  # input order does not matter
    assert stratified_split(ids, classes, seed=4)["val"] != first["val"]


def test_adding_images_of_one_class_leaves_the_others_split_alone():
    ids, classes = _ids({FLUORESCENCE: 40, TISSUE: 10})
    more_ids, more_classes = _ids({FLUORESCENCE: 40, TISSUE: 25})
    tissue = lambda split: [i for i in split["val"] if i.startswith("tis")]  # noqa: E731
    fluo = lambda split: [i for i in split["val"] if i.startswith("flu")]  # noqa: E731
    assert fluo(stratified_split(ids, classes)) == fluo(stratified_split(more_ids, more_classes))
    assert tissue(stratified_split(ids, classes)) != tissue(stratified_split(more_ids, more_classes))


def test_tiny_classes_keep_a_training_image_and_bad_input_is_named():
    split = stratified_split(["a", "b", "c"], [TISSUE, BRIGHTFIELD, BRIGHTFIELD])
    assert split == {"train": ["a", "b"], "val": ["c"]} or split == {"train": ["a", "c"], "val": ["b"]}
    with pytest.raises(ValueError, match="unique"):
        stratified_split(["a", "a"], [TISSUE, TISSUE])
    with pytest.raises(ValueError, match="one class per id"):
        stratified_split(["a"], [])


def test_select_split_of_a_folder(tmp_path):
    looks = {FLUORESCENCE: ([15], [200]), TISSUE: ([215, 180, 230], [160, 60, 120]), BRIGHTFIELD: ([225], [90])}
    for name, (background, nucleus) in looks.items():
        for k in range(5):
            image, labels = _discs((48, 48), background, nucleus, seed=k)
            write_label_layout(Sample(image, labels, f"{name}{k}"), tmp_path)
    dataset = open_dataset(tmp_path)
    val, train = select_split(dataset, "val"), select_split(dataset, "train")
    assert len(val) == 9 and len(train) == 6  # 15 % of 5 rounds to 1: the minimum, 3 a class, applies
    assert Counter(val.classes) == {name: 3 for name in looks} and Counter(train.classes) == {n: 2 for n in looks}
    assert {val[k].name for k in range(len(val))}.isdisjoint(train[k].name for k in range(len(train)))
    assert [val[k].name for k in range(len(val))] == [select_split(dataset, "val")[k].name for k in range(9)]
    with pytest.raises(ValueError, match="split="):
        select_split(dataset, "test")


@needs_dsb2018
def test_the_dsb2018_split_has_every_class_in_validation():
    dataset = open_dataset(DSB2018)
    everything = select_split(dataset, "all")
    counts = Counter(everything.classes)
    assert counts[TISSUE] >= 50 and counts[BRIGHTFIELD] >= 10 and counts[FLUORESCENCE] >= 400
    val = select_split(dataset, "val", classes=everything.classes)
    val_counts = Counter(val.classes)
    assert val_counts[TISSUE] >= 3 and val_counts[BRIGHTFIELD] >= 3
    assert 0.13 <= len(val) / len(dataset) <= 0.17
