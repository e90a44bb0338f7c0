"""The one place that writes mmseg model configs (neck, heads, losses) around a minr backbone and builds them: used
to train segmentation here and by `minrctl export --to mmseg`. It sizes everything from the encoder's `EncoderInfo`.

Losses average over labelled pixels only (`avg_non_ignore=True`, PyTorch's own cross-entropy): mmseg's default
divides by every pixel, ignored ones included, so the loss, and with it the step size, would shrink with the share
of padding (inputs padded to the size divisor get the ignore label) and of ADE20K's unlabelled pixels.
"""

from __future__ import annotations

import warnings
from typing import Any

from minr.models import EncoderInfo

# Dropout before the heads' classifiers, as mmseg's configs. Under `torchrun` each rank draws its own dropout masks,
# so a DDP run equals a one-process run in distribution, not value (the ranks' shares are otherwise the same maths).
HEAD_DROPOUT = 0.1
NORM = {"type": "BN", "requires_grad": True}  # SyncBN in mmseg's configs; BN runs on one CPU process
IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
IGNORE = 255

# Warnings that building mmseg's own models gives, and why they are benign here:
KNOWN_WARNINGS = (
    # mmseg's heads build their losses through its own deprecated helper; nothing for a caller to change
    (UserWarning, r"``build_loss`` would be deprecated soon"),
    # mmseg's MAE / BEiT backbone builds its relative-position index with torch.meshgrid's old default ("ij",
    # which is what it means)
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"),
)


def build_model(cfg: dict[str, Any]):
    """`mmseg.registry.MODELS.build` with mmseg's known-benign warnings (`KNOWN_WARNINGS`) silenced for this call
    only; any other warning still shows."""
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import finetune.seg_backbone  # noqa: F401  (registers minr's backbones)

    init_default_scope("mmseg")  # the parts mmengine builds itself (the data preprocessor) resolve in mmseg
    with warnings.catch_warnings():
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        return MODELS.build(ConfigDict(cfg) if isinstance(cfg, dict) else cfg)


def out_indices(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Evenly spaced blocks ending with the last, e.g. depth 4 -> (0, 1, 2, 3), depth 12 -> (2, 5, 8, 11)."""
    return tuple(round((i + 1) * depth / levels) - 1 for i in range(levels))


def backbone_levels(info: EncoderInfo, *, frozen: bool) -> tuple[int, ...]:
    """Which blocks give token maps: the last one for a frozen backbone under a light head, four for UPerNet."""
    return (info.depth - 1,) if frozen else out_indices(info.depth)


def preprocessor(in_chans: int, size_divisor: int, *, mean=None, std=None, size=None) -> dict[str, Any]:
    """mmseg's SegDataPreProcessor: [0, 255] images scaled (to [0, 1] unless `mean`/`std` are given) and padded to
    a multiple of the encoder's size divisor, in training (or to a fixed `size`, the crop) and at test time alike
    (predictions are cropped back), so images of any size can be segmented by encoders that need whole patches."""
    return {
        "type": "SegDataPreProcessor",
        "mean": list(mean) if mean is not None else [0.0] * in_chans,
        "std": list(std) if std is not None else [255.0] * in_chans,
        "bgr_to_rgb": in_chans == 3,
        "pad_val": 0,
        "seg_pad_val": IGNORE,
        **({"size": size} if size is not None else {"size_divisor": size_divisor}),
        "test_cfg": {"size_divisor": size_divisor},
    }


def segmentor_config(
    backbone: dict[str, Any],
    *,
    channels: int,
    num_classes: int,
    frozen: bool,
    token_pyramid: bool,
    head_channels: int,
    aux_channels: int,
    data_preprocessor: dict[str, Any],
    avg_non_ignore: bool = True,
) -> dict[str, Any]:
    """An mmseg EncoderDecoder: UPerNet with an auxiliary FCN head (MAE's mmseg recipe) on four levels, or for a
    frozen backbone a light one-conv FCN head. `token_pyramid`: token maps of one stride (Feature2Pyramid makes
    the four levels; the light head reads the last map); otherwise the backbone gives a per-pixel pyramid (strides
    1, 2, 4, 8) and the light head reads all four levels resized to full resolution, so that a pixel's classifier
    sees its neighbourhood (a 3x3 conv on a full-resolution map would see 3 pixels, where one on token maps sees 3
    tokens). `avg_non_ignore=False` only reproduces mmseg's published recipes (see the module docstring)."""
    ce = {"type": "CrossEntropyLoss", "use_sigmoid": False, "avg_non_ignore": avg_non_ignore}
    cfg: dict[str, Any] = {
        "type": "EncoderDecoder",
        "backbone": backbone,
        "data_preprocessor": data_preprocessor,
        "train_cfg": {},
        "test_cfg": {"mode": "whole"},
    }
    if frozen and token_pyramid:
        cfg["decode_head"] = _fcn(channels, 0, head_channels, num_classes, {**ce, "loss_weight": 1.0})
        return cfg
    if frozen:  # per-pixel maps: each pixel's own features beside the means of its 2-, 4- and 8-px neighbourhoods
        cfg["decode_head"] = {
            **_fcn([channels] * 4, [0, 1, 2, 3], head_channels, num_classes, {**ce, "loss_weight": 1.0}),
            "input_transform": "resize_concat",
            "kernel_size": 1,  # the pyramid gives the context; a 3x3 kernel at full resolution would add 2 px
        }
        return cfg
    if token_pyramid:
        cfg["neck"] = {"type": "Feature2Pyramid", "embed_dim": channels, "rescales": [4, 2, 1, 0.5], "norm_cfg": NORM}
    cfg["decode_head"] = {
        "type": "UPerHead",
        "in_channels": [channels] * 4,
        "in_index": [0, 1, 2, 3],
        "pool_scales": (1, 2, 3, 6),
        "channels": head_channels,
        "dropout_ratio": HEAD_DROPOUT,
        "loss_decode": {**ce, "loss_weight": 1.0},
        **_common(num_classes),
    }
    cfg["auxiliary_head"] = _fcn(channels, 2, aux_channels, num_classes, {**ce, "loss_weight": 0.4})
    return cfg


def _common(num_classes: int) -> dict[str, Any]:
    return {"num_classes": num_classes, "norm_cfg": NORM, "align_corners": False, "ignore_index": IGNORE}


def _fcn(channels, index, head_channels: int, num_classes: int, loss: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "FCNHead",
        "num_convs": 1,
        "concat_input": False,
        "dropout_ratio": HEAD_DROPOUT,
        "in_channels": channels,
        "in_index": index,
        "channels": head_channels,
        "loss_decode": loss,
        **_common(num_classes),
    }
