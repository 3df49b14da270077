"""Training data: sample sources (folders, synthetic streams) turned into augmented
network inputs with boxes, ids and label maps."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..data.augment import (AugmentConfig, as_brightfield, as_gray, augment, crop_keeping_centres, place_on_canvas,
                            resize_pair, stain_jitter)
from ..data.classes import BRIGHTFIELD, FLUORESCENCE, IMAGE_CLASSES, TISSUE
from ..data.layouts import open_dataset
from ..data.sample import Sample, boxes_from_labels
from ..data.split import dataset_classes, select_split
from ..data.synthetic import SynthConfig, generate
from ..pipeline.preprocess import Normalization, to_bgr8

#: seed stream tags, so that training, validation, augmentation, order and crops never share draws
TRAIN_STREAM, VAL_STREAM, AUGMENT_STREAM, ORDER_STREAM, CROP_STREAM = 0, 1, 2, 3, 4

#: how often :class:`FrameCrops` draws each image class (normalised over the classes
#: present): the rare stained-tissue and bright-field images are drawn far more often than
#: their share of DSB 2018 (17 % and 2 %), which is mostly fluorescence
CLASS_WEIGHTS: Mapping[str, float] = {FLUORESCENCE: 0.5, TISSUE: 0.3, BRIGHTFIELD: 0.2}
#: scale range of :class:`FrameCrops` (log-uniform) relative to the inference frame: 1 is
#: the Predictor's plain resize, 1.875 its zoom of crowded images
CROP_SCALES: Tuple[float, float] = (0.75, 2.0)
#: how often :class:`FrameCrops` changes a crop's look: fluorescence given the bright-field
#: look (gray, inverted: dark nuclei on white, the rarest class), tissue stains jittered and
#: tissue made gray (nuclei darker than a light background, as in bright-field)
FLUORESCENCE_AS_BRIGHTFIELD, TISSUE_STAIN_JITTER, TISSUE_AS_GRAY = 0.15, 0.5, 0.15
#: side of a placed piece (:class:`FrameCrops` ``placement``), as a share of the crop's, uniform
PLACED_SHARE: Tuple[float, float] = (0.4, 1.0)


class EpochSource(Sequence[Sample]):
    """``length`` samples, one per index, drawn anew each epoch (:meth:`set_epoch`);
    subclasses make sample ``index`` of ``self.epoch`` in :meth:`sample`."""

    #: what a sample is called in the out-of-range error
    kind = "sample"

    def __init__(self, length: int):
        self.length, self.epoch = length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not 0 <= index < self.length:
            raise IndexError(f"{self.kind} {index} of {self.length}")
        return self.sample(index)

    def sample(self, index: int) -> Sample:
        raise NotImplementedError


class SyntheticSource(EpochSource):
    """``length`` synthetic samples; with ``fresh`` a new set every epoch (sample ``i``
    of epoch ``e`` is ``generate((seed, TRAIN_STREAM, e, i))``), otherwise a fixed set."""

    kind = "synthetic sample"

    def __init__(self, length: int, config: SynthConfig = SynthConfig(), seed: int = 0, fresh: bool = True,
                 stream: int = TRAIN_STREAM):
        if length < 1:
            raise ValueError(f"a synthetic source needs at least 1 sample, got {length}")
        super().__init__(length)
        self.config, self.seed, self.fresh, self.stream = config, seed, fresh, stream

    def sample(self, index: int) -> Sample:
        key = (self.seed, self.stream, self.epoch if self.fresh else 0, index)
        return generate(key, self.config)


class FrameCrops(EpochSource):
    """Training crops of real images at the scale the Predictor sees them.

    The Predictor resizes every image, whatever its size and aspect, to its input (the
    ``frame``, e.g. 512 x 512), and segments crowded images again 1.875x enlarged. Sample
    ``i`` of epoch ``e`` (randomness from ``(seed, CROP_STREAM, e, i)`` only): an image drawn
    by ``class_weights`` (then uniformly within its class), made 8-bit BGR and resized
    bilinearly to ``s x frame`` with ``s`` log-uniform in ``scales``, and a random ``crop`` ``(H, W)`` window of it;
    instances whose extent centre lies outside the window are removed, as in
    :func:`~ancis_fast.data.augment.random_crop`. With ``looks``, the crop's look then
    changes now and then to that of a rarer class (:func:`change_look`). A share
    ``placement`` of the samples is a smaller piece (each side :data:`PLACED_SHARE` of the
    crop's) placed at a random spot of a ``crop``-sized canvas filled with its median, as a
    tile at an image's edge or a moved image is padded at inference, so that the model learns
    that padding, wherever it lies, changes nothing. Training then needs no zoom-out
    (``max_expand=1``): the scale is already right.

    Args:
        source: the images (e.g. a :class:`~ancis_fast.data.split.SplitView`).
        classes: the image class of each (default: ``source.classes``, else measured).
        length: samples per epoch (default: ``len(source)``).
    """

    kind = "crop"

    def __init__(self, source: Sequence[Sample], frame: Tuple[int, int], crop: Tuple[int, int], seed: int = 0,
                 classes: Optional[Sequence[str]] = None, length: Optional[int] = None,
                 class_weights: Mapping[str, float] = CLASS_WEIGHTS, scales: Tuple[float, float] = CROP_SCALES,
                 looks: bool = True, placement: float = 0.0):
        if len(source) == 0:
            raise ValueError("FrameCrops needs at least one image")
        if not 0 < scales[0] <= scales[1]:
            raise ValueError(f"scales={scales}; expected 0 < low <= high")
        if not 0.0 <= placement <= 1.0:
            raise ValueError(f"placement={placement}; expected a share in [0, 1]")
        classes = list(classes if classes is not None else getattr(source, "classes", None) or dataset_classes(source))
        self.members = {c: [k for k, d in enumerate(classes) if d == c] for c in dict.fromkeys(classes)}
        weights = np.array([class_weights.get(c, 0.0) for c in self.members], np.float64)
        if weights.sum() <= 0:
            raise ValueError(f"class_weights {dict(class_weights)} give no weight to the classes present "
                             f"({', '.join(self.members)})")
        self.weights = weights / weights.sum()
        super().__init__(len(source) if length is None else length)
        self.source, self.frame, self.crop, self.seed, self.scales = source, tuple(frame), tuple(crop), seed, scales
        self.looks, self.placement = looks, placement

    def sample(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, CROP_STREAM, self.epoch, index])
        image_class = list(self.members)[int(rng.choice(len(self.members), p=self.weights))]
        members = self.members[image_class]
        sample = self.source[members[int(rng.integers(len(members)))]]
        scale = math.exp(rng.uniform(math.log(self.scales[0]), math.log(self.scales[1])))
        height, width = (max(1, round(side * scale)) for side in self.frame)
        # 8 bits first, from the whole image, as at inference (a crop's percentiles would differ)
        image = cv2.resize(to_bgr8(sample.image), (width, height), interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(sample.labels, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
        crop_h, crop_w = min(self.crop[0], height), min(self.crop[1], width)
        placed = self.placement > 0 and rng.random() < self.placement  # no draw at 0: older runs replay exactly
        if placed:
            crop_h, crop_w = (max(1, round(side * rng.uniform(*PLACED_SHARE))) for side in (crop_h, crop_w))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        image, labels = crop_keeping_centres(image, labels, top, left, crop_h, crop_w)
        if self.looks:
            image = change_look(image, image_class, rng)
        if placed:
            top, left = (int(rng.integers(0, side - piece + 1)) for side, piece in zip(self.crop, labels.shape))
            image, labels = place_on_canvas(image, labels, self.crop, top, left)
        return Sample(np.ascontiguousarray(image), labels, f"{sample.name}@{index}")


def change_look(bgr8: np.ndarray, image_class: str, rng: np.random.Generator) -> np.ndarray:
    """A crop of class ``image_class`` (uint8 ``HxWx3`` BGR) in a look the model must also
    know: fluorescence as bright-field (``FLUORESCENCE_AS_BRIGHTFIELD`` of the time), tissue
    with jittered stains (``TISSUE_STAIN_JITTER``) and in gray (``TISSUE_AS_GRAY``). The
    nuclei stay where they are, so the labels hold."""
    if image_class == FLUORESCENCE and rng.random() < FLUORESCENCE_AS_BRIGHTFIELD:
        return as_brightfield(bgr8)
    if image_class == TISSUE:
        if rng.random() < TISSUE_STAIN_JITTER:
            bgr8 = stain_jitter(bgr8, rng)
        if rng.random() < TISSUE_AS_GRAY:
            bgr8 = as_gray(bgr8)
    return bgr8


def parse_class_weights(text: str) -> Dict[str, float]:
    """``"fluorescence=0.4,tissue=0.4,brightfield=0.2"`` -> ``{class: weight}`` for
    :class:`FrameCrops` (classes left out are never drawn; the weights need not sum to 1)."""
    weights: Dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in IMAGE_CLASSES:
            raise ValueError(f"class weight {item!r}: expected CLASS=WEIGHT with CLASS one of {', '.join(IMAGE_CLASSES)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"class weight {item!r}: {value!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"class weight {item!r}: expected a finite weight >= 0")
        weights[name] = weight
    if sum(weights.values()) <= 0:
        raise ValueError(f"class weights {text!r} give no class a positive weight")
    return weights


class ConcatSource(Sequence[Sample]):
    """Several sample sources one after the other (e.g. real crops and synthetic images)."""

    def __init__(self, sources: Sequence[Sequence[Sample]]):
        if not sources:
            raise ValueError("ConcatSource needs at least one source")
        self.sources = list(sources)
        self.ends = np.cumsum([len(s) for s in self.sources]).tolist()

    def set_epoch(self, epoch: int) -> None:
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        part = bisect.bisect_right(self.ends, index)
        return self.sources[part][index - (self.ends[part - 1] if part else 0)]


def parse_source(spec: str, synth: SynthConfig, seed: int, validation: bool = False, split: str = "all",
                 frame: Optional[Tuple[int, int]] = None, crop: Optional[Tuple[int, int]] = None,
                 class_weights: Mapping[str, float] = CLASS_WEIGHTS, placement: float = 0.0) -> Sequence[Sample]:
    """``synth:N`` -> a synthetic source of N samples (fresh every epoch for training, a
    fixed set for validation); anything else is a dataset folder (DSB or label layout),
    restricted to ``split`` (see :mod:`ancis_fast.data.split`). For training, with
    ``frame`` and ``crop`` given, a folder gives :class:`FrameCrops` of its images, drawn
    by ``class_weights``, ``placement`` of them placed on a padded canvas."""
    if spec.startswith("synth:"):
        try:
            length = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"expected synth:N (N samples), got {spec!r}") from None
        return SyntheticSource(length, synth, seed, fresh=not validation, stream=VAL_STREAM if validation else TRAIN_STREAM)
    images = select_split(open_dataset(spec), split)
    if len(images) == 0:
        raise ValueError(f"the {split!r} split of {spec!r} holds no images")
    if validation or frame is None or crop is None:
        return images
    return FrameCrops(images, frame, crop, seed, class_weights=class_weights, placement=placement)


def validation_size(source: Sequence[Sample], input_size: Tuple[int, int], frame: Tuple[int, int]) -> Tuple[int, int]:
    """The size validation images are scored at: synthetic ones are made at the training
    input size (nuclei already at the frame's pixel scale); images of a dataset folder are
    resized to the inference ``frame``, as the Predictor does."""
    return tuple(input_size) if isinstance(source, SyntheticSource) else tuple(frame)


@dataclass
class Example:
    """One network-ready training example.

    Attributes:
        image: float32 ``[3,H,W]`` in ``[0,1]`` (BGR), the network input.
        boxes: float32 ``[N,4]`` (y1,x1,y2,x2) inclusive pixel corners (spec §9 rule).
        ids: int64 ``[N]`` label id of each box in ``labels``.
        labels: int32 ``[H,W]`` instance label map at the input size.
        name: sample name.
    """

    image: torch.Tensor
    boxes: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor
    name: str


class ExampleDataset(torch.utils.data.Dataset):
    """Turns samples into :class:`Example` s at ``input_size``: 8-bit BGR conversion (as at
    inference), then spec §7 augmentation (or a plain resize when ``augmentation`` is None).

    Randomness of item ``i`` in epoch ``e`` comes from ``(seed, AUGMENT_STREAM, e, i)`` only,
    so results do not depend on workers or on resuming.
    """

    def __init__(self, source: Sequence[Sample], input_size: Tuple[int, int], augmentation: Optional[AugmentConfig],
                 seed: int = 0, normalization: Normalization = Normalization()):
        self.source, self.input_size, self.seed, self.normalization = source, tuple(input_size), seed, normalization
        if augmentation is not None and tuple(augmentation.output_size) != self.input_size:
            raise ValueError(f"augmentation output_size {augmentation.output_size} != input_size {input_size}")
        self.augmentation = augmentation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Example:
        sample = self.source[index]
        bgr = to_bgr8(sample.image, self.normalization)
        if self.augmentation is None:
            image, labels = resize_pair(bgr, sample.labels, self.input_size)
        else:
            rng = np.random.default_rng([self.seed, AUGMENT_STREAM, self.epoch, index])
            image, labels = augment(bgr, sample.labels, rng, self.augmentation)
        boxes, ids = boxes_from_labels(labels)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) / 255.0
        return Example(tensor, torch.from_numpy(boxes), torch.from_numpy(ids), torch.from_numpy(labels), sample.name)


def collate(examples: List[Example]) -> Dict[str, object]:
    """Batch: ``images [B,3,H,W]`` plus per-image lists ``boxes``, ``ids``, ``labels``, ``names``."""
    return {
        "images": torch.stack([e.image for e in examples]),
        "boxes": [e.boxes for e in examples],
        "ids": [e.ids for e in examples],
        "labels": [e.labels for e in examples],
        "names": [e.name for e in examples],
    }


def epoch_order(length: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of an epoch (int64 ``[length]``), reproducible on resume."""
    return np.random.default_rng([seed, ORDER_STREAM, epoch]).permutation(length)


def make_loader(dataset: ExampleDataset, batch_size: int, epoch: int, seed: int, start_batch: int = 0,
                workers: int = 0, shuffle: bool = True) -> torch.utils.data.DataLoader:
    """Loader over one epoch, starting at batch ``start_batch`` (to resume mid-epoch).
    Incomplete last batches are dropped when shuffling (BatchNorm dislikes tiny batches)."""
    dataset.set_epoch(epoch)
    order = epoch_order(len(dataset), seed, epoch) if shuffle else np.arange(len(dataset))
    drop_last = shuffle and len(dataset) >= batch_size
    indices = order[start_batch * batch_size:].tolist()
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=indices, collate_fn=collate,
                                       num_workers=workers, drop_last=drop_last,
                                       persistent_workers=False)


def validation_images(source: Sequence[Sample], input_size: Tuple[int, int],
                      normalization: Normalization = Normalization()) -> List[Tuple[np.ndarray, np.ndarray, str]]:
    """Validation samples at the input size: ``(bgr8 [H,W,3] uint8, labels [H,W] int32, name)``.

    Images are resized once here (bilinear, rounded to 8 bits), so that evaluation runs in
    the network frame and the inference path's own resize is the identity.
    """
    out = []
    for sample in source:
        image, labels = resize_pair(to_bgr8(sample.image, normalization), sample.labels, input_size)
        out.append((np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, sample.name))
    return out
