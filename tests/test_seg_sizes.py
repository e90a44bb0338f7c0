"""Segmentation of images of any size: every family and backbone feature trains and predicts on odd sizes (inputs
padded to the encoder's size divisor, predictions cropped back), paper-scale encoders included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from finetune import segdata
from finetune.configs import SegConfig
from finetune.mmseg_config import build_model, preprocessor, segmentor_config
from finetune.segmentation import build_segmentor, evaluate, plan_arms, train_segmentor
from tests.conftest import make_checkpoint

SIZES = ((200, 260), (37, 53))  # (height, width): ADE20K-like, and prime sides


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """A `seg:` folder whose train and val images have the odd sizes above (gray; labels 0..2)."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("img_dir", "ann_dir"):
            (root / sub / split).mkdir(parents=True)
        for i, (h, w) in enumerate(SIZES):
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(root / "img_dir" / split / f"{i}.png")
            Image.fromarray(rng.integers(0, 3, (h, w), dtype=np.uint8)).save(root / "ann_dir" / split / f"{i}.png")
    (root / "classes.json").write_text('{"classes": ["bg", "a", "b"]}')
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ginr_tiny", "transinr_tiny", "mae_tiny"])
def test_odd_sizes_train_and_predict_with_every_backbone(model, odd_folder, tmp_path):
    ckpt = str(make_checkpoint(model, tmp_path / "ckpt.safetensors"))
    info = segdata.resolve(f"seg:{odd_folder}")
    train, val = (segdata.build_dataset(info, s, in_chans=1) for s in ("train", "val"))
    for regime in ("frozen", "full"):
        cfg = SegConfig(
            ckpts=(ckpt,),
            dataset=f"seg:{odd_folder}",
            max_steps=1,
            batch_size=2,
            regime=regime,
            backbones=("tokens", "inr", "inr+tokens", "pixels"),
            head_channels=8,
        )
        for arm in plan_arms(cfg):
            torch.manual_seed(0)
            seg = build_segmentor(cfg, arm, len(info.classes))
            out = tmp_path / regime / arm.name.replace(":", "_")
            train_segmentor(seg, train, cfg, 0, out, torch.device("cpu"), resume=False, progress=False)
            res = evaluate(seg, val, torch.device("cpu"), batch_size=2)
            assert [p.shape for p in res["predictions"]] == list(SIZES), (regime, arm.name)
            assert 0 <= res["mIoU"] <= 100


def _paper_segmentor(name: str, in_chans: int, divisor: int):
    backbone = {"type": "MinrBackbone", "model_name": name, "out_indices": (-1,), "frozen": True}
    cfg = segmentor_config(
        backbone,
        channels=768,
        num_classes=3,
        frozen=True,
        token_pyramid=True,
        head_channels=8,
        aux_channels=4,
        data_preprocessor=preprocessor(in_chans, divisor),
    )
    return build_model(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name, divisor", [("mae_base_paper", 14), ("ginr_paper", 1)])
def test_paper_scale_encoders_take_a_200x260_image(name, divisor):
    """One training step and one prediction on a 200x260 RGB image: mmseg's test-time pass used to assert on it
    (200 is no multiple of MAE's 14-px patches); MINR's 9-px tokenizer takes any size."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    seg = _paper_segmentor(name, 3, divisor)
    assert seg.data_preprocessor.test_cfg == {"size_divisor": divisor}
    image = torch.randint(0, 255, (3, 200, 260), dtype=torch.uint8)

    def sample():
        s = SegDataSample(metainfo={"img_shape": (200, 260), "ori_shape": (200, 260)})
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 200, 260)))
        return s

    seg.train()
    data = seg.data_preprocessor({"inputs": [image], "data_samples": [sample()]}, True)
    loss, _ = seg.parse_losses(seg(**data, mode="loss"))
    loss.backward()
    assert torch.isfinite(loss)
    seg.eval()
    with torch.no_grad():
        data = seg.data_preprocessor({"inputs": [image], "data_samples": [sample()]}, False)
        (pred,) = seg(**data, mode="predict")
    assert pred.pred_sem_seg.data.shape == (1, 200, 260)
