"""GINR (kakaobrain/ginr-ipc) as a MINR hypernetwork: one INR layer is instance-specific, predicted as the
low-rank product `U_n @ V` (U_n from the weight tokens, V shared); every other layer is shared
(docs/METHOD.md#ginr-one-layer-predicted).

Keys as in `minr.models.hyper`: B batch, N data tokens, T weight tokens, D width, I/O the modulated layer's
input/output width, R the rank (its weight tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from minr import inr
from minr.errors import MinrError
from minr.models.args import positive
from minr.models.hyper import HyperINR, HyperINRArgs, weight_head


@dataclass(frozen=True, kw_only=True)
class GINRArgs(HyperINRArgs):
    # GINR's transformer has q/k/v biases and residual dropout 0.1; its code holds the frequencies as a frozen parameter
    qkv_bias: bool = True
    drop: float = 0.1
    frequencies: str = "frozen"
    ginr_rank: int = 256  # R, at most the modulated layer's output width
    modulated_layer: int = 2  # the instance-specific layer, a hidden layer counted from 1 (the paper's is 2)

    def check(self) -> None:
        super().check()
        positive(ginr_rank=self.ginr_rank)
        if not 1 <= self.modulated_layer < self.inr_layers:
            raise MinrError(
                f"model_args.modulated_layer must name a hidden layer, 1..{self.inr_layers - 1} (the paper's is 2), "
                f"got {self.modulated_layer}"
            )


class GINR(HyperINR):
    Args = GINRArgs
    decoder_prefixes = (*HyperINR.decoder_prefixes, "ginr_v")

    def _build_weight_prediction(self, a: GINRArgs) -> list[int]:
        self.modulated = a.modulated_layer - 1  # 0-based index of the instance-specific layer
        fan_in, fan_out = self.layer_shapes[self.modulated]
        rank = min(a.ginr_rank, fan_out)
        self.heads = nn.ModuleList([weight_head(a.embed_dim, fan_in)])
        self.ginr_v = nn.Parameter(torch.empty(rank, fan_out))
        self.base_weights[self.modulated].requires_grad_(False)  # replaced by U_n @ V; kept as GINR's code does
        return [rank]

    @torch.no_grad()
    def _init_inr(self) -> None:
        """ginr-ipc's `create_params_with_init`: kaiming_uniform(a=sqrt(5)) on the (in, out) matrix, whose fan torch
        takes from its second dimension, so U(+-1/sqrt(out)): ~10x wider for the 3-wide output layer; zero biases;
        the shared factor V ~ N(0, 1) / sqrt(rank * in)."""
        for w, b in zip(self.base_weights, self.biases, strict=True):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            nn.init.zeros_(b)
        rank, fan_in = self.ginr_v.shape[0], self.layer_shapes[self.modulated][0]
        self.ginr_v.normal_().div_(math.sqrt(rank * fan_in))

    def _first_image_layer(self) -> int:
        return self.modulated  # the layers before it are shared: functions of the coordinates alone

    def predict_weights(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, N + T, D) -> one weight per INR layer: shared (I, O), and (B, I, O) = U_n @ V for the modulated one
        (whose base weight is unused), columns normalised."""
        weights = [inr.normalize_columns(w) for w in self.base_weights]
        u = self.modulations(tokens)[0].transpose(1, 2)  # (B, I, R)
        weights[self.modulated] = inr.normalize_columns(u @ self.ginr_v)  # (B, I, O)
        return weights
