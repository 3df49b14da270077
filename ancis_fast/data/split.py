"""A seeded train/validation split of a dataset folder, stratified by image class.

``stratified_split`` is a pure function of the sample ids, their classes and the seed:
each class's ids are sorted, shuffled with ``default_rng([seed, class index])`` and the
first ``max(min_val, round(val_fraction * n))`` of them (at most ``n - 1``, so that every
class keeps a training image) go to validation. So training (``train-det/train-seg
--split train``) and evaluation (``evaluate --split val``) see the same split on any
machine, and adding images of one class never moves the others.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .classes import IMAGE_CLASSES, image_class
from .sample import Sample

SPLITS = ("all", "train", "val")
SPLIT_SEED = 2018
VAL_FRACTION = 0.15
MIN_VAL_PER_CLASS = 3


def stratified_split(ids: Sequence[str], classes: Sequence[str], seed: int = SPLIT_SEED,
                     val_fraction: float = VAL_FRACTION, min_val: int = MIN_VAL_PER_CLASS) -> Dict[str, List[str]]:
    """``{"train": ids, "val": ids}`` (each sorted), stratified by ``classes`` (one per id)."""
    if len(ids) != len(classes):
        raise ValueError(f"{len(ids)} ids but {len(classes)} classes; give one class per id")
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique to split a dataset")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}; expected a fraction in [0, 1)")
    order = {name: k for k, name in enumerate(IMAGE_CLASSES)}
    val: List[str] = []
    for name in sorted(set(classes), key=lambda c: (order.get(c, len(order)), c)):
        members = sorted(i for i, c in zip(ids, classes) if c == name)
        stream = order.get(name, len(order))
        shuffled = [members[k] for k in np.random.default_rng([seed, stream]).permutation(len(members))]
        count = min(len(members) - 1, max(min_val, round(val_fraction * len(members))))
        val += shuffled[:max(0, count)]
    chosen = set(val)
    return {"train": sorted(i for i in ids if i not in chosen), "val": sorted(val)}


class SplitView(Sequence[Sample]):
    """The samples of one split of a dataset, with the class of each (``classes[k]``)."""

    def __init__(self, dataset: Sequence[Sample], indices: Sequence[int], classes: Sequence[str]):
        self.dataset, self.indices, self.classes = dataset, list(indices), list(classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self.dataset[self.indices[index]]


def dataset_classes(dataset: Sequence[Sample]) -> List[str]:
    """The :func:`~.classes.image_class` of every sample (reads each image once; only the
    image where the dataset can, as the folder readers' ``image(index)``)."""
    read = getattr(dataset, "image", None) or (lambda k: dataset[k].image)
    return [image_class(read(k)) for k in range(len(dataset))]


def select_split(dataset: Sequence[Sample], split: str = "all", seed: int = SPLIT_SEED,
                 classes: Optional[Sequence[str]] = None) -> SplitView:
    """The ``split`` (``all``, ``train`` or ``val``) of a dataset folder's samples.

    ``dataset`` needs sample ids (``dataset.ids``, as the folder readers of
    :mod:`.layouts` have); ``classes`` defaults to :func:`dataset_classes`.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    ids = list(getattr(dataset, "ids", [])) or [dataset[k].name for k in range(len(dataset))]
    classes = list(classes) if classes is not None else dataset_classes(dataset)
    if split == "all":
        return SplitView(dataset, range(len(ids)), classes)
    chosen = set(stratified_split(ids, classes, seed)[split])
    indices = [k for k, name in enumerate(ids) if name in chosen]
    return SplitView(dataset, indices, [classes[k] for k in indices])
