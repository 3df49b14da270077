"""Annotated images: synthetic generator, dataset readers/writers and augmentation."""
from .augment import AugmentConfig, augment, resize_pair
from .layouts import DSBDataset, LabelImageDataset, detect_layout, open_dataset, write_dsb, write_label_layout
from .sample import Sample, boxes_from_labels, instance_ids, label_extents, masks_to_labels, relabel_sequential
from .synthetic import SynthConfig, generate

__all__ = [
    "Sample", "boxes_from_labels", "instance_ids", "label_extents", "masks_to_labels", "relabel_sequential",
    "SynthConfig", "generate", "DSBDataset", "LabelImageDataset", "open_dataset", "detect_layout", "write_dsb",
    "write_label_layout", "AugmentConfig", "augment", "resize_pair",
]
