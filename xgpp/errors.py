"""xgpp's exception hierarchy.

Every error xgpp raises on purpose derives from :class:`XgppError` and also from the built-in
exception it stands for, so ``except ValueError`` (or ``OSError``, ``KeyError``...) keeps
working.  The command line prints an :class:`XgppError` as one line (``xgpp: error: ...``, exit
status 2); anything else that is not a user error (``TypeError``, ``AttributeError``...) is a bug
and keeps its traceback.  See ``docs/reliability.md`` ("Exceptions").

::

    XgppError(Exception)
    ├── InputError(ValueError)            bad variables, dims, files, splits, configs
    │   ├── UnitError                     units missing, unknown or not convertible
    │   ├── NotFoundError(KeyError)       a named variable, model, split, entry... that is absent
    │   └── UnknownOptionError(TypeError) an unknown config field, reader option or parameter
    │       (CatalogSecurityError in xgpp.catalog also derives from InputError)
    ├── CorruptChunkError(OSError)        stored data that cannot be decoded
    ├── IncompleteStoreError(ValueError)  a store whose writer has not finished it
    ├── BundleError(ValueError)           a model bundle that is malformed or tampered with
    │       (BundleFormatError in xgpp.models._format derives from it)
    ├── MissingDependencyError(ImportError)  an optional extra is not installed
    ├── DeviceError(RuntimeError)         the requested device (a CUDA GPU) is not there
    └── ServiceError(ConnectionError)     a Dask scheduler or gateway did not answer
        └── ServiceAuthError(PermissionError)  ... or refused the credentials
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CorruptChunkError",
    "DeviceError",
    "IncompleteStoreError",
    "InputError",
    "MissingDependencyError",
    "NotFoundError",
    "ServiceAuthError",
    "ServiceError",
    "UnitError",
    "UnknownOptionError",
    "XgppError",
]


class XgppError(Exception):
    """Base of every error xgpp raises on purpose (bad input, damaged or incomplete data)."""


class InputError(XgppError, ValueError):
    """Bad user input: a variable, dimension, file, split, option or configuration value.

    The message names what was given, what was expected and, where there is one, the fix.
    """


class UnitError(InputError):
    """A variable's units are missing, unknown, or not convertible to the canonical ones."""


class NotFoundError(InputError, KeyError):
    """A named thing (variable, model, split, catalog entry, reader...) is not there.

    Also a :class:`KeyError`, so ``except KeyError`` keeps working; unlike a plain ``KeyError``
    its message prints unquoted.
    """

    __str__ = Exception.__str__


class UnknownOptionError(InputError, TypeError):
    """An unknown configuration field, reader option or catalog parameter (a typo, usually).

    Also a :class:`TypeError`, as an unknown keyword argument is, so ``except TypeError`` keeps
    working; the message lists the known names.
    """


class CorruptChunkError(XgppError, OSError):
    """Stored data (a Zarr chunk, a netCDF or CSV file) that cannot be decoded; names the file."""


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


class BundleError(XgppError, ValueError):
    """A model bundle that is malformed, of an unknown format, or whose files were tampered with."""


class MissingDependencyError(XgppError, ImportError):
    """An optional dependency (an ``xgpp[...]`` extra) is not installed; names the extra."""


class DeviceError(XgppError, RuntimeError):
    """The requested device (for example a CUDA GPU) is not available on this machine."""


class ServiceError(XgppError, ConnectionError):
    """A service (Dask scheduler, Dask Gateway) did not answer at the given address."""


class ServiceAuthError(ServiceError, PermissionError):
    """A service answered but refused the credentials given."""
