"""minr encoders, and the image itself, as mmsegmentation backbones.

`feature="tokens"`: the spatial tokens of the blocks in `out_indices` (`Encoder.forward_intermediates`), as
(B, D, h, w) maps on the token grid (what Feature2Pyramid expects from a ViT). `feature="inr"`: one per-pixel map
at full resolution, the INR hidden activations of `inr_layers` side by side (`Encoder.dense_features`), a dense
feature no ViT has; `"inr+tokens"` adds the last block's token map, upsampled to full resolution. `PixelBackbone`:
the image itself, the floor that an encoder's features must beat under the same head. A per-pixel map feeds a light
head as it is, or UPerNet as a four-level pyramid (`dense_pyramid`: strides 1, 2, 4, 8).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from finetune.configs import FEATURES
from minr.build import model_from_checkpoint, register_encoder_prefix
from minr.errors import MinrError
from minr.models import create_model

PYRAMID_STRIDES = (1, 2, 4, 8)


def dense_pyramid(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, C, H, W) -> four maps at strides 1, 2, 4, 8 (average pooling, edges kept), UPerNet's four levels."""
    return tuple(x if s == 1 else F.avg_pool2d(x, s, ceil_mode=True) for s in PYRAMID_STRIDES)


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
        inr_layers: tuple[int, ...] | None = None,
        pyramid: bool = False,
        inr_window: bool = True,
        inr_fit_steps: int = 0,
        frozen: bool = False,
        drop_path_rate: float = 0.0,
        cache_mb: int = 4096,
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
        if feature not in FEATURES or feature == "pixels":
            raise MinrError(f"backbone feature must be tokens, inr or inr+tokens, got {feature!r}")
        info = self.encoder.info()
        self.ckpt, self.model_name, self.model_args = ckpt, model_name, dict(model_args or {})
        self.feature, self.frozen, self.pyramid, self.inr_window = feature, frozen, pyramid, inr_window
        self.inr_fit_steps = inr_fit_steps
        # a frozen encoder's per-pixel features of a training image are the same at every step: kept, up to cache_mb
        self._cache: dict[str, torch.Tensor] = {}
        self._cache_left = cache_mb * 2**20
        self.out_indices = _levels(out_indices, info.depth, "block", ckpt or model_name)
        self.inr_layers: tuple[int, ...] = ()
        if feature != "tokens":
            if info.dense_levels == 0:
                raise MinrError(
                    f"--backbone {feature} needs per-pixel features; {ckpt or model_name} ({info.family}) has none"
                )
            layers = info.dense_default if inr_layers is None else inr_layers
            self.inr_layers = _levels(layers, info.dense_levels, "INR layer", ckpt or model_name)
        self.channels = dense_channels(info, feature, self.inr_layers)
        for name, p in self.encoder.named_parameters():  # what the model itself freezes stays frozen
            p.requires_grad_(p.requires_grad and not frozen and self._trains(name))

    def _trains(self, name: str) -> bool:
        """Fine-tuning trains what the features pass through: the encoder, and for per-pixel features the INR's
        own parts as well (its weight heads and shared layers), which classification leaves out."""
        return self.feature != "tokens" or self.encoder.is_encoder_parameter(name)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.feature == "tokens":
                return tuple(self.encoder.forward_intermediates(x, self.out_indices))
            dense = self._cached(x) if self.frozen and self.training else self._dense(x)
        return dense_pyramid(dense) if self.pyramid else (dense,)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel map: INR activations, and for "inr+tokens" the last token map upsampled."""
        maps = self._inr_maps(x)
        if self.feature == "inr+tokens":
            tokens = self.encoder.forward_intermediates(x, self.out_indices[-1:])[0]
            maps.append(F.interpolate(tokens, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]

    def _cached(self, x: torch.Tensor) -> torch.Tensor:
        """`_dense` of a frozen encoder in training, each image's map computed once: the encoder does not change
        and each image's INR fit is independent of its batch, so a seen image's map is read back (keyed by its
        pixels, so an augmented view is a new image). Maps are kept while `cache_mb` lasts."""
        keys = [hashlib.blake2b(xi.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest() for xi in x]
        keys = [f"{k}{tuple(x.shape[1:])}" for k in keys]
        new = [i for i, k in enumerate(keys) if k not in self._cache]
        fresh = dict(zip(new, self._dense(x[new]), strict=True)) if new else {}
        for i, m in fresh.items():
            size = m.numel() * m.element_size()
            if size <= self._cache_left:
                self._cache[keys[i]], self._cache_left = m.detach().clone(), self._cache_left - size
        return torch.stack([fresh[i] if i in fresh else self._cache[k] for i, k in enumerate(keys)])

    def _inr_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """INR activations at every pixel. With `inr_window`, the image is cut into windows of the encoder's own
        pretraining size (zero-padded at the far edges) and each window gets its own INR, rendered at its pixels:
        the scale and content the hypernetwork was trained to represent. `inr_fit_steps`: each window's INR is
        first fitted to its pixels (`HyperINR.fit_weights`). (B, C, H, W) -> [(B, hidden, H, W)]."""
        if not self.inr_window:
            return self.encoder.dense_features(x, self.inr_layers, self.inr_fit_steps)
        s = self.encoder.image_size
        B, C, H, W = x.shape
        nh, nw = -(-H // s), -(-W // s)
        padded = F.pad(x, (0, nw * s - W, 0, nh * s - H))  # (B, C, nh*s, nw*s)
        windows = padded.reshape(B, C, nh, s, nw, s).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, s, s)
        out = []
        for m in self.encoder.dense_features(windows, self.inr_layers, self.inr_fit_steps):  # (B*nh*nw, K, s, s)
            m = m.reshape(B, nh, nw, -1, s, s).permute(0, 3, 1, 4, 2, 5).reshape(B, -1, nh * s, nw * s)
            out.append(m[..., :H, :W])
        return out


@MODELS.register_module()
class PixelBackbone(BaseModule):
    """The image as its own feature map (no encoder, nothing to train): the segmentation floor."""

    def __init__(self, *, in_chans: int, pyramid: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.channels, self.pyramid, self.feature = in_chans, pyramid, "pixels"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return dense_pyramid(x) if self.pyramid else (x,)


def dense_channels(info, feature: str, inr_layers: tuple[int, ...]) -> int:
    """Channels of the map a backbone gives for `feature`."""
    if feature == "tokens":
        return info.width
    if feature == "pixels":
        return info.in_chans
    return info.dense_width * len(inr_layers) + (info.width if feature == "inr+tokens" else 0)


def _levels(indices, n: int, what: str, source) -> tuple[int, ...]:
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise MinrError(f"{what} {bad[0]} does not exist: {source} has {n} ({-n}..{n - 1})")
    return tuple(sorted({i % n for i in indices}))


# mmseg's segmentors keep their backbone at `backbone`: segmentation checkpoints hold the encoder under this
SEGMENTOR_ENCODER_PREFIX = "backbone." + MinrBackbone.ENCODER_PREFIX
register_encoder_prefix("segmentation", SEGMENTOR_ENCODER_PREFIX)
