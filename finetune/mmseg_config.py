"""The one place that writes mmseg model configs (neck, heads, losses) around a minr encoder: used to train
segmentation here and by `minrctl export --to mmseg`. It sizes everything from the encoder's `EncoderInfo`."""

from __future__ import annotations

from typing import Any

from minr.models import EncoderInfo

NORM = {"type": "BN", "requires_grad": True}  # SyncBN in mmseg's configs; BN runs on one CPU process
IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def out_indices(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Evenly spaced blocks ending with the last, e.g. depth 4 -> (0, 1, 2, 3), depth 12 -> (2, 5, 8, 11)."""
    return tuple(round((i + 1) * depth / levels) - 1 for i in range(levels))


def backbone_levels(info: EncoderInfo, *, feature: str, frozen: bool) -> tuple[int, ...]:
    """Which levels feed the heads: the last one for a frozen backbone under a light head, four for UPerNet."""
    n = info.dense_levels if feature == "inr" else info.depth
    return (n - 1,) if frozen else out_indices(n)


def segmentor_config(
    backbone: dict[str, Any],
    *,
    channels: int,
    num_classes: int,
    frozen: bool,
    pyramid: bool,
    head_channels: int,
    aux_channels: int,
    preprocessor: dict[str, Any],
    ignore_index: int = 255,
) -> dict[str, Any]:
    """An mmseg EncoderDecoder: a light one-conv FCN head on the last map of a frozen backbone, or UPerNet with an
    auxiliary FCN head (MAE's mmseg recipe), with Feature2Pyramid in front when the maps share one stride
    (`pyramid`: token maps; per-pixel maps are already full resolution)."""
    # avg_non_ignore: the loss is the mean over labelled pixels (PyTorch's cross_entropy), not over every pixel with
    # ignored ones counted as zero (mmseg's old default): with ADE20K's ignored pixels the latter shrinks the loss
    # image by image; on the scenes, which ignore none, both give the same number.
    ce = {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0, "avg_non_ignore": True}
    common = {"num_classes": num_classes, "norm_cfg": NORM, "align_corners": False, "ignore_index": ignore_index}
    fcn = {"type": "FCNHead", "num_convs": 1, "concat_input": False, "dropout_ratio": 0.1, **common}
    cfg: dict[str, Any] = {
        "type": "EncoderDecoder",
        "backbone": backbone,
        "data_preprocessor": {"type": "SegDataPreProcessor", "pad_val": 0, "seg_pad_val": ignore_index, **preprocessor},
        "train_cfg": {},
        "test_cfg": {"mode": "whole"},
    }
    if frozen:
        cfg["decode_head"] = {
            **fcn,
            "in_channels": channels,
            "in_index": 0,
            "channels": head_channels,
            "loss_decode": ce,
        }
        return cfg
    if pyramid:
        cfg["neck"] = {"type": "Feature2Pyramid", "embed_dim": channels, "rescales": [4, 2, 1, 0.5], "norm_cfg": NORM}
    cfg["decode_head"] = {
        "type": "UPerHead",
        "in_channels": [channels] * 4,
        "in_index": [0, 1, 2, 3],
        "pool_scales": (1, 2, 3, 6),
        "channels": head_channels,
        "dropout_ratio": 0.1,
        "loss_decode": ce,
        **common,
    }
    aux_loss = {**ce, "loss_weight": 0.4}
    cfg["auxiliary_head"] = {
        **fcn,
        "in_channels": channels,
        "in_index": 2,
        "channels": aux_channels,
        "loss_decode": aux_loss,
    }
    return cfg
