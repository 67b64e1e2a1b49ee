"""xgpp: global gross primary productivity from satellite SIF and eddy-covariance GPP.

Importing xgpp registers the ``ds.gpp`` accessor.  Heavy or optional parts load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from xgpp import accessor as _accessor  # noqa: F401  (registers ds.gpp)
from xgpp._version import __version__

# public name -> module that defines it; loaded on first attribute access
_LAZY = {
    "make_world": "xgpp.synthetic",
    "write_world": "xgpp.synthetic",
    "WorldConfig": "xgpp.synthetic",
    "open_catalog": "xgpp.catalog",
    "open_cube": "xgpp.catalog",
    "cluster": "xgpp.cluster",
    "train": "xgpp.train",
    "load_model": "xgpp.models",
    "predict": "xgpp.predict",
    "io": "xgpp.io",
    "variables": "xgpp.variables",
    "errors": "xgpp.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"xgpp.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xgpp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
