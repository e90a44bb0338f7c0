"""TransINR (Chen & Wang, yinboc/trans-inr) as a MINR hypernetwork: every INR layer is predicted. Each layer has
its own group of weight tokens and head; the G predicted columns are tiled over the layer's O outputs and multiply
a shared base weight (docs/METHOD.md#transinr-every-layer-predicted).

Keys as in `minr.models.hyper`: B batch, N data tokens, T weight tokens, D width, I/O a layer's input/output
width, G weight tokens of one layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from minr import inr
from minr.models.args import positive
from minr.models.hyper import HyperINR, HyperINRArgs, weight_head


@dataclass(frozen=True, kw_only=True)
class TransINRArgs(HyperINRArgs):
    tokens_per_layer: int = 64  # G, at most each layer's output width

    def check(self) -> None:
        super().check()
        positive(tokens_per_layer=self.tokens_per_layer)


class TransINR(HyperINR):
    Args = TransINRArgs

    def _build_weight_prediction(self, a: TransINRArgs) -> list[int]:
        self.heads = nn.ModuleList(weight_head(a.embed_dim, i) for i, _ in self.layer_shapes)
        return [min(a.tokens_per_layer, o) for _, o in self.layer_shapes]

    @torch.no_grad()
    def _init_inr(self) -> None:
        """trans-inr's `init_wb`: nn.Linear's default, weight U(+-1/sqrt(in)) and bias U(+-1/sqrt(in))."""
        for w, b in zip(self.base_weights, self.biases, strict=True):
            nn.init.kaiming_uniform_(w.T, a=math.sqrt(5))
            bound = 1 / math.sqrt(w.shape[0])
            nn.init.uniform_(b, -bound, bound)

    def predict_weights(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, N + T, D) -> one (B, I, O) weight per INR layer: base * tiled modulation, columns normalised."""
        weights = []
        for (_, o), m, base in zip(self.layer_shapes, self.modulations(tokens), self.base_weights, strict=True):
            m = m.transpose(1, 2)  # (B, I, G)
            m = m.repeat(1, 1, math.ceil(o / m.shape[-1]))[:, :, :o]  # tile: column j uses token j mod G
            weights.append(inr.normalize_columns(base * m))  # (B, I, O)
        return weights
