"""The one exception type of the metrics package (its own module so submodules import it without a cycle)."""
from __future__ import annotations

from runtime.errors import UserError


class MetricError(UserError, ValueError):
    """Invalid metric input: empty class, unknown key, mismatched lengths, NaN/inf."""
