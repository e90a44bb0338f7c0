"""minr encoders as mmsegmentation backbones: multi-level feature maps from the common encoder interface.

`feature="tokens"`: the data/patch tokens of the blocks in `out_indices`, as (B, D, h, w) maps on the token grid
(what Feature2Pyramid expects from a ViT). `feature="inr"` (MINR only): the hidden activations of the INR rendered
at every pixel, (B, hidden, H, W) maps at full resolution: a dense feature no ViT has.
"""

from __future__ import annotations

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from minr.build import model_from_checkpoint
from minr.errors import MinrError
from minr.models import create_model


@MODELS.register_module()
class MinrBackbone(BaseModule):
    def __init__(
        self,
        *,
        ckpt: str | None = None,
        model_name: str | None = None,
        model_args: dict | None = None,
        out_indices: tuple[int, ...] = (-1,),
        feature: str = "tokens",
        frozen: bool = False,
        drop_path_rate: float = 0.0,
        init_cfg=None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if ckpt is not None:
            self.encoder, _, _ = model_from_checkpoint(ckpt, drop_path_rate=drop_path_rate)
        elif model_name is not None:  # weights come later (an exported checkpoint loaded by mmseg)
            self.encoder = create_model(model_name, **(model_args or {}), drop_path_rate=drop_path_rate)
        else:
            raise MinrError("MinrBackbone needs ckpt= or model_name=")
        if feature not in ("tokens", "inr"):
            raise MinrError(f"backbone feature must be tokens or inr, got {feature!r}")
        if feature == "inr" and self.encoder.family != "minr":
            raise MinrError(
                f"per-pixel INR features need a MINR checkpoint; {ckpt or model_name} is {self.encoder.family}"
            )
        depth = len(self.encoder.blocks)
        n_levels = len(self.encoder.layer_shapes) - 1 if feature == "inr" else depth
        bad = [i for i in out_indices if not -n_levels <= i < n_levels]
        if bad:
            raise MinrError(f"out_indices {bad} do not exist: this encoder has {n_levels} {feature} levels")
        self.out_indices, self.feature, self.frozen = tuple(i % n_levels for i in out_indices), feature, frozen
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(not frozen and self.encoder.is_encoder_parameter(name))

    @property
    def channels(self) -> int:
        return self.encoder.layer_shapes[0][1] if self.feature == "inr" else self.encoder.embed_dim

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.feature == "inr":
                return tuple(self.encoder.pixel_features(x, self.out_indices))
            h, w = self.encoder.data_grid(x)
            data = self.encoder.token_groups()["data" if self.encoder.family == "minr" else "patch"]
            layers = self.encoder.get_intermediate_layers(x, list(self.out_indices))
            return tuple(t[:, data].transpose(1, 2).reshape(len(x), -1, h, w) for t in layers)
