"""xgpp's exception hierarchy.

Every error xgpp raises on purpose derives from :class:`XgppError` and also from the built-in
exception it stands for, so ``except ValueError`` (or ``OSError``...) keeps working.  See
``docs/reliability.md``.
"""

from __future__ import annotations

__all__ = ["IncompleteStoreError", "XgppError"]


class XgppError(Exception):
    """Base of every error xgpp raises on purpose (bad input, damaged or incomplete data)."""


class IncompleteStoreError(XgppError, ValueError):
    """A store whose writer has not finished it (its ``xgpp_complete`` attribute is not true).

    The message names the store, the missing time slabs and the command that finishes it;
    ``xgpp.open_cube(..., allow_incomplete=True)`` opens it anyway.  Attributes ``url`` and
    ``missing`` (the missing slabs' time-index ranges, ``[(start, stop), ...]``, or None when
    unknown) are set.
    """

    def __init__(self, message: str, *, url: str | None = None,
                 missing: list[tuple[int, int]] | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.missing = missing
