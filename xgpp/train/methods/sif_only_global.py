"""SIF-only baseline with one global SIF -> GPP slope (``sif-only`` fits one per IGBP class)."""

from __future__ import annotations

from xgpp.train.methods import register_method, sif_only
from xgpp.train.methods.siftml_variants import with_config

register_method("sif-only-global", needs_sites=True, sif_product="sif_tropomi",
                comparison="transfer-variant",
                description="SIF network + one global SIF -> GPP slope fitted at the training "
                            "sites",
                config_sections=("features", "net", "pretrain", "loader", "site_window",
                                 "igbp_from", "sif_var"),
                )(with_config(sif_only.fit, sif_conversion="global"))
