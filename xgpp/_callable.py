"""Let ``xgpp.train(...)`` and ``xgpp.predict(...)`` be called although they are also modules.

``import xgpp.train`` binds the *module* to ``xgpp.train``, so a plain function of the same
name would be shadowed.  Giving the module a ``__call__`` keeps both spellings working:
``xgpp.train(...)`` and ``from xgpp.train import train``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["make_module_callable"]


def make_module_callable(module_name: str, function_name: str) -> None:
    """Make ``sys.modules[module_name](...)`` call its function ``function_name``."""
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    module.__class__ = _CallableModule
