"""ancis_fast: fast, faithful ANCIS cell instance segmentation.

>>> from ancis_fast import Predictor
>>> instances = Predictor().predict("cells.png")
"""
from .instances import Instances
from .predictor import Predictor

__version__ = "0.1.0"
__all__ = ["Predictor", "Instances", "__version__"]
