"""Stable name: answer grading lives in `asft.eval.grading`."""

from asft.eval.grading import *  # noqa: F401,F403
from asft.eval.grading import __all__  # noqa: F401
