"""minr encoders as mmsegmentation backbones: multi-level feature maps from the common encoder interface.

`feature="tokens"`: the spatial tokens of the blocks in `out_indices` (`Encoder.forward_intermediates`), as
(B, D, h, w) maps on the token grid (what Feature2Pyramid expects from a ViT). `feature="inr"`: per-pixel maps
at full resolution (`Encoder.dense_features`; MINR's INR hidden activations), a dense feature no ViT has.
"""

from __future__ import annotations

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from finetune.configs import FEATURES
from minr.build import model_from_checkpoint, register_encoder_prefix
from minr.errors import MinrError
from minr.models import create_model


@MODELS.register_module()
class MinrBackbone(BaseModule):
    ENCODER_PREFIX = "encoder."  # where `self.encoder`'s tensors lie in this module's state dict

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
            self.encoder, cfg, _ = model_from_checkpoint(ckpt, drop_path_rate=drop_path_rate)
            model_name, model_args = cfg.model, cfg.model_args
        elif model_name is not None:  # weights come later (an exported checkpoint loaded by mmseg)
            self.encoder = create_model(model_name, **(model_args or {}), drop_path_rate=drop_path_rate)
        else:
            raise MinrError("MinrBackbone needs ckpt= or model_name=")
        if feature not in FEATURES:
            raise MinrError(f"backbone feature must be tokens or inr, got {feature!r}")
        info = self.encoder.info()
        n_levels = info.dense_levels if feature == "inr" else info.depth
        if n_levels == 0:
            raise MinrError(f"--backbone inr needs per-pixel features; {ckpt or model_name} ({info.family}) has none")
        bad = [i for i in out_indices if not -n_levels <= i < n_levels]
        if bad:
            raise MinrError(f"out_indices {bad} do not exist: this encoder has {n_levels} {feature} levels")
        self.ckpt, self.model_name, self.model_args = ckpt, model_name, dict(model_args or {})
        self.out_indices, self.feature, self.frozen = tuple(i % n_levels for i in out_indices), feature, frozen
        self.channels = info.dense_width if feature == "inr" else info.width
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(not frozen and self.encoder.is_encoder_parameter(name))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.feature == "inr":
                return tuple(self.encoder.dense_features(x, self.out_indices))
            return tuple(self.encoder.forward_intermediates(x, self.out_indices))


# mmseg's segmentors keep their backbone at `backbone`: segmentation checkpoints hold the encoder under this
SEGMENTOR_ENCODER_PREFIX = "backbone." + MinrBackbone.ENCODER_PREFIX
register_encoder_prefix("segmentation", SEGMENTOR_ENCODER_PREFIX)
