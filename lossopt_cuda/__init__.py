"""lossopt_cuda: loss-driven optimizers (AdaLo, AdamL, AdaLoss) for PyTorch.

Each optimizer takes the current loss at every step, ``opt.step(closure)`` or
``opt.step(loss=loss)``, and sets its step size from it.
"""

from ._kernels import build_info
from ._loss import MissingLossError
from .adalo import AdaLo
from .adaloss import AdaLoss
from .adaml import AdamL

__all__ = ["AdaLo", "AdamL", "AdaLoss", "MissingLossError", "build_info"]
__version__ = "0.1.0"
