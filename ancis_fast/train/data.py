"""Training data: sample sources (folders, synthetic streams) turned into augmented
network inputs with boxes, ids and label maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.augment import AugmentConfig, augment, resize_pair
from ..data.layouts import open_dataset
from ..data.sample import Sample, boxes_from_labels
from ..data.synthetic import SynthConfig, generate
from ..pipeline.preprocess import Normalization, to_bgr8

#: seed stream tags, so that training, validation, augmentation and order never share draws
TRAIN_STREAM, VAL_STREAM, AUGMENT_STREAM, ORDER_STREAM = 0, 1, 2, 3


class SyntheticSource(Sequence[Sample]):
    """``length`` synthetic samples; with ``fresh`` a new set every epoch (sample ``i``
    of epoch ``e`` is ``generate((seed, TRAIN_STREAM, e, i))``), otherwise a fixed set."""

    def __init__(self, length: int, config: SynthConfig = SynthConfig(), seed: int = 0, fresh: bool = True,
                 stream: int = TRAIN_STREAM):
        if length < 1:
            raise ValueError(f"a synthetic source needs at least 1 sample, got {length}")
        self.length, self.config, self.seed, self.fresh, self.stream = length, config, seed, fresh, stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} of a {self.length}-sample synthetic source")
        key = (self.seed, self.stream, self.epoch if self.fresh else 0, index)
        return generate(key, self.config)


def parse_source(spec: str, synth: SynthConfig, seed: int, validation: bool = False) -> Sequence[Sample]:
    """``synth:N`` -> a synthetic source of N samples (fresh every epoch for training, a
    fixed set for validation); anything else is a dataset folder (DSB or label layout)."""
    if spec.startswith("synth:"):
        try:
            length = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"expected synth:N (N samples), got {spec!r}") from None
        return SyntheticSource(length, synth, seed, fresh=not validation, stream=VAL_STREAM if validation else TRAIN_STREAM)
    return open_dataset(spec)


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
