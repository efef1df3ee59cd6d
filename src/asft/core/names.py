"""Names a user types (modes, benchmarks, protocols, stages, config keys): the hint for a near miss."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """" (did you mean 'asft'?)" for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
