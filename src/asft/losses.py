"""Stable name: the loss modes and `compute_loss` live in `asft.train.losses`."""

from asft.train.losses import *  # noqa: F401,F403
from asft.train.losses import __all__  # noqa: F401
