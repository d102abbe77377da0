"""``/stacks``-related routes (placeholder: filled in by the work on issue 5)."""

from __future__ import annotations

from typing import Any

ROUTES: list[tuple[str, str, Any]] = []
