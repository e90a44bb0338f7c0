"""minr: masked implicit-neural-representation pretraining (TransINR, GINR) against MAE."""

from minr.errors import MinrError

__all__ = ["MinrError"]
__version__ = "0.1.0"
