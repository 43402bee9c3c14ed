"""A process-wide progress hook: the CLI sets one (a rich progress bar), tasks report to it.

Kept out of flow parameters so that nothing but plain data ever reaches the Prefect API.
"""

from __future__ import annotations

from typing import Callable

Reporter = Callable[[str, int, int | None], None]  # (stage, advance, total)
_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def report(stage: str, advance: int = 0, total: int | None = None) -> None:
    if _reporter is not None:
        _reporter(stage, advance, total)
