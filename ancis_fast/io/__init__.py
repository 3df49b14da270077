"""Image readers and result writers (every write is atomic: temp file, then rename)."""
from .readers import IMAGE_SUFFIXES, INPUT_SUFFIXES, find_images, iter_frames, read_image
from .writers import atomic_path, overlay, write_instances, write_label_image

__all__ = ["read_image", "iter_frames", "find_images", "IMAGE_SUFFIXES", "INPUT_SUFFIXES", "atomic_path", "write_label_image", "write_instances",
           "overlay"]
