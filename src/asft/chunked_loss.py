"""Stable name: the memory-lean loss lives in `asft.train.chunked_loss`."""

from asft.train.chunked_loss import *  # noqa: F401,F403
from asft.train.chunked_loss import __all__  # noqa: F401
