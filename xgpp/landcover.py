"""IGBP land-cover classes as data: code, name, and the per-biome parameters xgpp uses.

Class numbers follow MODIS MCD12Q1 (IGBP scheme, Friedl et al. 2010): 0 is water.
"""

from __future__ import annotations

import numpy as np

from xgpp.errors import InputError

__all__ = ["IGBP_CODES", "IGBP_NAMES", "code_to_class", "class_to_code", "flag_attrs"]

#: IGBP short codes by class number (index = class).
IGBP_CODES: tuple[str, ...] = (
    "WAT", "ENF", "EBF", "DNF", "DBF", "MF", "CSH", "OSH", "WSA", "SAV",
    "GRA", "WET", "CRO", "URB", "CVM", "SNO", "BSV",
)
IGBP_NAMES: tuple[str, ...] = (
    "water", "evergreen needleleaf forest", "evergreen broadleaf forest",
    "deciduous needleleaf forest", "deciduous broadleaf forest", "mixed forest",
    "closed shrubland", "open shrubland", "woody savanna", "savanna", "grassland",
    "permanent wetland", "cropland", "urban and built-up", "cropland/natural vegetation mosaic",
    "snow and ice", "barren",
)


def code_to_class(codes: np.ndarray | list[str]) -> np.ndarray:
    """IGBP short codes (e.g. ``"ENF"``) to class numbers; unknown codes raise ``ValueError``."""
    lookup = {c: i for i, c in enumerate(IGBP_CODES)}
    lookup["WAT"] = 0
    out = []
    for c in np.asarray(codes).ravel():
        key = str(c).strip().upper()
        if key not in lookup:
            raise InputError(
                f"unknown IGBP code {str(c)!r}; expected one of {list(IGBP_CODES)}"
            )
        out.append(lookup[key])
    return np.asarray(out, dtype=np.int8).reshape(np.shape(codes))


def class_to_code(classes: np.ndarray) -> np.ndarray:
    """IGBP class numbers to short codes."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= len(IGBP_CODES)):
        raise InputError(f"IGBP class numbers must lie in 0..{len(IGBP_CODES) - 1}")
    return np.asarray(IGBP_CODES, dtype=object)[classes.astype(int)].astype(str)


def flag_attrs() -> dict[str, object]:
    """CF ``flag_values``/``flag_meanings`` attributes for an integer IGBP field."""
    return {
        "long_name": "IGBP land-cover class",
        "units": "1",
        "standard_name": "area_type",
        "flag_values": list(range(len(IGBP_CODES))),
        "flag_meanings": " ".join(n.replace(" ", "_").replace("/", "_") for n in IGBP_NAMES),
        "flag_codes": " ".join(IGBP_CODES),
    }
