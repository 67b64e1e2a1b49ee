"""Readers of real products into xgpp's canonical layout, and :func:`harmonize`.

See docs/data_model.md for the layout every reader returns.
"""

from xgpp.io.era5 import esat_magnus, read_era5, read_modis
from xgpp.io.fluxnet import SW_TO_PPFD, parse_fluxnet_name, read_fluxnet
from xgpp.io.harmonize import harmonize
from xgpp.io.oco2 import read_oco2_lite
from xgpp.io.sources import SOURCES, DataSource, open_source, register_source
from xgpp.io.tropomi import read_tropomi

__all__ = [
    "SOURCES",
    "SW_TO_PPFD",
    "DataSource",
    "esat_magnus",
    "harmonize",
    "open_source",
    "parse_fluxnet_name",
    "read_era5",
    "read_fluxnet",
    "read_modis",
    "read_oco2_lite",
    "read_tropomi",
    "register_source",
]
