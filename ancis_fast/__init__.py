"""ancis_fast: fast, faithful ANCIS cell instance segmentation.

>>> from ancis_fast import Predictor
>>> instances = Predictor().predict("cells.png")
"""
from .config import PredictorConfig
from .instances import Instances
from .predictor import Predictor

__version__ = "0.1.0"
__all__ = ["Predictor", "PredictorConfig", "Instances", "__version__"]
