"""The synthetic twin world: global cubes from published physics whose true GPP is known."""

from xgpp.synthetic.config import BIOME, VARIANTS, WorldConfig
from xgpp.synthetic.world import PRODUCTS, World, make_world
from xgpp.synthetic.write import write_world

__all__ = ["BIOME", "PRODUCTS", "VARIANTS", "World", "WorldConfig", "make_world", "write_world"]
