"""napari sample data: the images bundled with the package (``File > Open Sample >
ancis_fast``), as napari layer-data tuples."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..io.readers import read_image
from ..models.weights import ASSETS

LayerData = Tuple[Any, Dict[str, Any], str]


def synthetic_nuclei() -> List[LayerData]:
    """``assets/sample.png``: a synthetic fluorescence image, 512x512, 8-bit, 123 nuclei."""
    return [(read_image(ASSETS / "sample.png"), {"name": "sample"}, "image")]


def real_nuclei() -> List[LayerData]:
    """``assets/dsb2018_nuclei.png``: a real fluorescence image (Data Science Bowl 2018, CC0),
    512x512, 8-bit, 125 nuclei."""
    return [(read_image(ASSETS / "dsb2018_nuclei.png"), {"name": "dsb2018_nuclei"}, "image")]
