import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import finetune  # noqa: F401  (mmcv.ops stand-in)
from cli.main import main
from finetune import segdata
from finetune.scenes import make_fashion_scenes
from finetune.seg_backbone import MinrBackbone
from finetune.segmentation import SegConfig, build_segmentor, evaluate, plan_arms, train_segmentor
from minr.errors import MinrError
from minr.models import list_models
from tests.conftest import ROOT, killed_after_first_checkpoint, make_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg")
    return {m: make_checkpoint(m, d / m / "checkpoint.safetensors") for m in ("ginr_tiny", "transinr_tiny", "mae_tiny")}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fashion_small):
    return make_fashion_scenes(
        tmp_path_factory.mktemp("scenes"), n_train=48, n_val=16, size=56, data_root=str(fashion_small)
    )


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_compat_module_lets_mmseg_import_and_is_inert_with_full_mmcv():
    r = _run(
        "import finetune, sys, mmseg.models, mmseg.datasets, mmseg.evaluation\n"
        "print(getattr(sys.modules['mmcv.ops'], '__minr_shim__', False))"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "True"
    # with compiled ops present (simulated), nothing is replaced
    r = _run(
        "import sys, types\nsys.modules['mmcv._ext'] = types.ModuleType('mmcv._ext')\n"
        "from finetune import mmcv_compat\nprint(mmcv_compat.install(), 'mmcv.ops' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["False", "False"]


def test_focal_loss_matches_mmseg_reference():
    from mmseg.models.losses.focal_loss import py_sigmoid_focal_loss

    from finetune.mmcv_compat import sigmoid_focal_loss

    logits, target = torch.randn(20, 5), torch.randint(0, 6, (20,))
    one_hot = torch.nn.functional.one_hot(target, 6)[:, :5]
    ref = py_sigmoid_focal_loss(logits, one_hot, gamma=2.0, alpha=0.25, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(logits, target, 2.0, 0.25, None, "none"), ref, atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_adapter_gives_feature2pyramid_its_shapes(name):
    """Every registered encoder: four (B, D, h, w) levels on the token grid, which Feature2Pyramid turns into
    strides 4, 8, 16, 32 of a patch-16 ViT (here: 1x, 2x, 4x, 8x of the token stride)."""
    from mmseg.models.necks import Feature2Pyramid

    from finetune.mmseg_config import out_indices

    with torch.device("meta"):
        bb = MinrBackbone(model_name=name, out_indices=out_indices(len_blocks(name)))
        size = bb.encoder.image_size
        feats = bb(torch.zeros(2, bb.encoder.in_chans, size, size))
        h, w = bb.encoder.token_grid(size, size)
        assert [f.shape for f in feats] == [(2, bb.encoder.embed_dim, h, w)] * 4
        neck = Feature2Pyramid(bb.encoder.embed_dim, norm_cfg={"type": "BN"})
        pyramid = neck(feats)
    assert [p.shape[-1] for p in pyramid] == [4 * w, 2 * w, w, w // 2]


def len_blocks(name):
    from minr.models import create_model

    with torch.device("meta"):
        return len(create_model(name).blocks)


def test_inr_pixel_features_are_dense(ckpts):
    bb = MinrBackbone(ckpt=str(ckpts["transinr_tiny"]), feature="inr", inr_layers=(0, 3))
    x = torch.rand(2, 1, 56, 40)
    (feats,) = bb(x)
    assert feats.shape == (2, 128, 56, 40)  # two layers of 64 side by side, at every pixel
    # windows of the pretraining size: the top-left window's features are those of that crop alone
    (alone,) = bb(x[..., :28, :28])
    assert torch.allclose(feats[..., :28, :28], alone, atol=1e-5)
    bb.inr_window = False
    (whole,) = bb(x)
    assert whole.shape == feats.shape and not torch.allclose(whole[..., :28, :28], alone, atol=1e-3)
    both = MinrBackbone(ckpt=str(ckpts["ginr_tiny"]), feature="inr+tokens", inr_layers=(1,), pyramid=True)
    assert [tuple(f.shape) for f in both(x)] == [(2, 64 + 128, h, w) for h, w in ((56, 40), (28, 20), (14, 10), (7, 5))]
    with pytest.raises(MinrError, match="needs per-pixel features.* has none"):
        MinrBackbone(ckpt=str(ckpts["mae_tiny"]), feature="inr")
    with pytest.raises(MinrError, match="block 7 does not exist"):
        MinrBackbone(ckpt=str(ckpts["mae_tiny"]), out_indices=(7,))
    with pytest.raises(MinrError, match="INR layer 4 does not exist"):
        MinrBackbone(ckpt=str(ckpts["ginr_tiny"]), feature="inr", inr_layers=(4,))


def test_ginr_shared_inr_layers_do_not_depend_on_the_image(ckpts):
    """What `EncoderInfo.dense_specific` says: GINR's layers before the modulated one are the same function of the
    coordinates for every image; TransINR's every layer depends on the image."""
    for name, specific in (("ginr_tiny", (1, 2, 3)), ("transinr_tiny", (0, 1, 2, 3))):
        bb = MinrBackbone(ckpt=str(ckpts[name]), feature="inr", inr_layers=(0, 1, 2, 3))
        assert bb.encoder.info().dense_specific == specific
        (f,) = bb(torch.rand(2, 1, 28, 28))
        per_layer = f.reshape(2, 4, 64, 28, 28)
        same = [bool(torch.allclose(per_layer[0, i], per_layer[1, i])) for i in range(4)]
        assert same == [i not in specific for i in range(4)], (name, same)


@pytest.mark.slow
@pytest.mark.parametrize("model, regime", [("ginr_tiny", "full"), ("mae_tiny", "frozen")])
def test_upernet_training_lowers_the_loss(model, regime, ckpts, scenes, tmp_path):
    info = segdata.resolve(f"fashion-scenes:{scenes}")
    train = segdata.build_dataset(info, "train", in_chans=1)
    cfg = SegConfig(ckpts=(str(ckpts[model]),), dataset=str(scenes), max_steps=30, batch_size=8, lr=2e-3, regime=regime)
    torch.manual_seed(0)
    seg = build_segmentor(cfg, plan_arms(cfg)[0], len(info.classes))
    frozen_before = {k: v.clone() for k, v in seg.backbone.state_dict().items()}
    stats = train_segmentor(seg, train, cfg, 0, tmp_path, torch.device("cpu"), resume=False, progress=False)
    first, last = np.mean(stats.losses[:3]), np.mean(stats.losses[-3:])
    assert last < 0.8 * first, (first, last)
    if regime == "frozen":
        assert all(torch.equal(v, seg.backbone.state_dict()[k]) for k, v in frozen_before.items())


def test_iou_metric_agrees_with_a_confusion_matrix(ckpts, scenes):
    """mmseg's IoUMetric on a model's predictions against mIoU from a numpy confusion matrix (and torchmetrics)."""
    info = segdata.resolve(f"fashion-scenes:{scenes}")
    val = segdata.build_dataset(info, "val", in_chans=1)
    cfg = SegConfig(ckpts=(str(ckpts["mae_tiny"]),), dataset=str(scenes), regime="frozen")
    torch.manual_seed(0)
    seg = build_segmentor(cfg, plan_arms(cfg)[0], len(info.classes))
    res = evaluate(seg, val, torch.device("cpu"))
    k = len(info.classes)
    conf = np.zeros((k, k), np.int64)
    for i, pred in enumerate(res["predictions"]):
        gt = val[i]["data_samples"].gt_sem_seg.data[0].numpy()
        conf += np.bincount(k * gt.ravel() + pred.ravel(), minlength=k * k).reshape(k, k)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = conf.sum(1) > 0  # mmseg averages over classes present in the ground truth
    miou = np.nanmean(np.where(present, inter / np.maximum(union, 1), np.nan))
    assert res["mIoU"] == pytest.approx(100 * miou, abs=0.01)
    assert res["aAcc"] == pytest.approx(100 * np.diag(conf).sum() / conf.sum(), abs=0.01)
    tm = pytest.importorskip("torchmetrics")
    preds = torch.from_numpy(np.stack(res["predictions"]))
    gts = torch.stack([val[i]["data_samples"].gt_sem_seg.data[0] for i in range(len(val))])
    jac = tm.classification.MulticlassJaccardIndex(k, average="none")(preds, gts.long())
    assert res["mIoU"] == pytest.approx(100 * jac[torch.from_numpy(present)].mean().item(), abs=0.01)


def test_bad_segmentation_folders(scenes, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(scenes, bad)
    (bad / "ann_dir" / "val" / "00003.png").unlink()
    with pytest.raises(MinrError, match="00003.* has no annotation"):
        segdata.resolve(f"fashion-scenes:{bad}")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(bad / "ann_dir" / "val" / "00003.png")
    with pytest.raises(MinrError, match="30x30 but image"):
        segdata.resolve(f"fashion-scenes:{bad}")
    Image.fromarray(np.full((56, 56), 42, np.uint8)).save(bad / "ann_dir" / "val" / "00003.png")
    with pytest.raises(MinrError, match="00003.png has label 42 but the dataset has 11 classes"):
        segdata.resolve(f"fashion-scenes:{bad}")  # checked up front, before any training
    Image.fromarray(np.full((56, 56), 3, np.uint8)).save(bad / "ann_dir" / "val" / "00003.png")
    with pytest.raises(MinrError, match="img_dir"):
        segdata.resolve(f"seg:{tmp_path}")
    (bad / "img_dir" / "train" / "zzz.png").write_bytes((bad / "img_dir" / "train" / "00000.png").read_bytes())
    with pytest.raises(MinrError, match="zzz.png has no annotation"):
        segdata.resolve(f"seg:{bad}")


def test_export_round_trips_through_mmseg_and_timm(ckpts, tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from finetune.export import export

    x = torch.rand(2, 1, 28, 28)
    for name in ("mae_tiny", "ginr_tiny"):
        written = export(str(ckpts[name]), tmp_path / name, to="mmseg")
        cfg = Config.fromfile(written["config"])
        assert cfg.model.decode_head.type == "UPerHead" and cfg.train_cfg.max_iters == 160000
        if name == "mae_tiny":
            cfg.model.backbone.img_size = (28, 28)
        seg = MODELS.build(cfg.model)
        seg.backbone.init_weights()  # loads the written weights the way mmseg's tools/train.py does
        saved = torch.load(written["weights"], weights_only=True)
        assert set(saved) == set(seg.backbone.state_dict())
        ours = MinrBackbone(ckpt=str(ckpts[name]), out_indices=(0, 1, 2))
        seg.backbone.eval()
        with torch.no_grad():
            got, ref = seg.backbone(x)[:3], ours(x)
        for g, r in zip(got, ref, strict=True):
            assert torch.allclose(g, r, atol=1e-4)
    written = export(str(ckpts["mae_tiny"]), tmp_path / "timm", to="timm")
    from functools import partial

    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    kwargs = json.loads(Path(written["config"]).read_text())["kwargs"]
    vit = VisionTransformer(**kwargs, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    vit.load_state_dict(load_file(written["weights"]), strict=True)
    with pytest.raises(MinrError, match="no timm"):
        export(str(ckpts["ginr_tiny"]), tmp_path / "t2", to="timm")


@pytest.mark.slow
def test_segmentation_cli_end_to_end(ckpts, fashion_small, tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "data",
            "make-fashion-scenes",
            "--out",
            str(tmp_path / "sc"),
            "--n-train",
            "24",
            "--n-val",
            "8",
            "--data-root",
            str(fashion_small),
        ],
    )
    assert r.exit_code == 0, r.output
    args = [
        "finetune",
        "--task",
        "segmentation",
        "--ckpt",
        str(ckpts["ginr_tiny"]),
        "--ckpt",
        str(ckpts["mae_tiny"]),
        "--dataset",
        f"fashion-scenes:{tmp_path / 'sc'}",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--backbone",
        "tokens",
        "--backbone",
        "inr",
        "--backbone",
        "pixels",
        "--inr-layers",
        "1,3",
        "--inr-fit-steps",
        "3",
        "--regime",
        "frozen",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    names = ["ginr_tiny:tokens", "ginr_tiny:inr[1,3]", "mae_tiny:tokens", "pixels"]
    assert [e["name"] for e in res["entries"]] == names
    assert [e["family"] for e in res["entries"]] == ["minr", "minr", "mae", "pixels"]
    assert res["entries"][1]["inr_layers"] == [1, 3] and res["entries"][3]["ckpt"] is None
    assert [e["inr_fit_steps"] for e in res["entries"]] == [0, 3, 0, 0]
    per_class = res["entries"][0]["per_class_IoU"]
    assert list(per_class) == res["classes"] and res["classes"][:2] == ["background", "T-shirt/top"]
    assert all(v is None or 0 <= v <= 1 for e in res["entries"] for v in e["per_class_IoU"].values())
    assert {p["a"] for p in res["paired"]} == {"ginr_tiny:tokens", "ginr_tiny:inr[1,3]"}
    assert [(p["a"], p["b"]) for p in res["vs_floor"]] == [(n, "pixels") for n in names[:3]]
    assert "## IoU per class" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "predictions.png").stat().st_size > 500
    r = runner.invoke(main, args)  # the same --out again without --resume
    assert r.exit_code == 2 and "--resume" in r.output
    r = runner.invoke(main, args[:-3] + ["--resume", "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", str(ckpts["ginr_tiny"]), "--to", "timm", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "no timm architecture" in r.output


def test_ade20k_layout_and_scene_determinism(tmp_path, fashion_small):
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 40, 3), 100, np.uint8)).save(base / "images" / split / f"ADE_{i}.jpg")
            Image.fromarray(np.full((32, 40), 3 * i, np.uint8)).save(base / "annotations" / split / f"ADE_{i}.png")
    info = segdata.resolve(f"ade20k:{tmp_path}")
    assert len(info.classes) == 150 and info.reduce_zero_label
    val = segdata.build_dataset(info, "val", in_chans=3)
    labels = [val[i]["data_samples"].gt_sem_seg.data.unique().tolist() for i in range(2)]
    assert sorted(labels) == [[2], [255]]  # label 0 becomes ignore (255), 3 becomes class 2
    a = make_fashion_scenes(tmp_path / "a", n_train=3, n_val=2, seed=5, data_root=str(fashion_small))
    b = make_fashion_scenes(tmp_path / "b", n_train=3, n_val=2, seed=5, data_root=str(fashion_small))
    for p in sorted((a / "ann_dir" / "train").iterdir()):
        assert p.read_bytes() == (b / "ann_dir" / "train" / p.name).read_bytes()


def test_frozen_per_pixel_features_are_computed_once_per_image(ckpts, monkeypatch):
    """A frozen encoder's per-pixel map of a training image is computed once and read back after, equal to a fresh
    computation; evaluation does not use the cache."""
    bb = MinrBackbone(ckpt=str(ckpts["ginr_tiny"]), feature="inr+tokens", inr_layers=(1,), frozen=True, inr_fit_steps=2)
    bb.train()
    x, calls, real = torch.rand(3, 1, 56, 40), [], bb._dense
    monkeypatch.setattr(bb, "_dense", lambda t: calls.append(len(t)) or real(t))
    (a,) = bb(x)
    (b,) = bb(torch.cat([x[1:], torch.rand(1, 1, 56, 40)]))  # two images seen, one new
    assert calls == [3, 1] and torch.equal(b[:2], a[1:])
    bb.eval()
    (fresh,) = bb(x)
    assert calls == [3, 1, 3] and torch.allclose(fresh, a, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, regime, backbone",
    [("ginr_tiny", "full", "tokens"), ("mae_tiny", "frozen", "tokens"), ("ginr_tiny", "frozen", "inr")],
)
def test_segmentation_resume_is_exact(model, regime, backbone, ckpts, scenes, tmp_path, monkeypatch):
    """A segmentation run killed right after its first checkpoint and resumed ends with the weights of one never
    stopped: the one training loop's resume holds for its third user."""
    from minr.checkpoint import load_checkpoint, weights_sha256

    info = segdata.resolve(f"fashion-scenes:{scenes}")
    train = segdata.build_dataset(info, "train", in_chans=1)
    cfg = SegConfig(
        ckpts=(str(ckpts[model]),), dataset=str(scenes), max_steps=9, batch_size=8, regime=regime, backbones=(backbone,)
    )

    def run(out, resume=False):
        torch.manual_seed(0)
        seg = build_segmentor(cfg, plan_arms(cfg)[0], len(info.classes))
        return train_segmentor(seg, train, cfg, 0, out, torch.device("cpu"), resume=resume, progress=False)

    run(tmp_path / "a")
    with killed_after_first_checkpoint(monkeypatch):
        run(tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "segmentation.safetensors").meta["step"] == 6  # 48 images / 8: epoch end
    run(tmp_path / "b", resume=True)
    a, b = (load_checkpoint(tmp_path / d / "segmentation.safetensors") for d in "ab")
    assert b.meta["step"] == 9 and b.meta["kind"] == "segmentation" and b.meta["model"] == model
    assert weights_sha256(a.model_state) == weights_sha256(b.model_state)
    # the run's speed survives the stop: a finished run resumed again still reports it, from the checkpoint's totals
    assert b.meta["trained_images"] == a.meta["trained_images"] == 9 * 8
    again = run(tmp_path / "b", resume=True)
    assert again.images == 0 and again.images_per_s == 72 / b.meta["trained_busy_s"]


def _all_background_miou(val) -> float:
    """mmseg's mIoU of predicting background everywhere: IoU(background) over the classes present."""
    gts = np.concatenate([val[i]["data_samples"].gt_sem_seg.data[0].numpy().ravel() for i in range(len(val))])
    gts = gts[gts != 255]
    return float(np.mean(gts == 0)) / len(np.unique(gts))


@pytest.mark.slow
def test_frozen_inr_features_beat_the_all_background_answer(fashion_small, tmp_path):
    """The per-pixel INR activations of a briefly pretrained GINR, frozen and fitted to each window for a few steps,
    under the light head: above what predicting background everywhere scores (what the head learned from the
    hypernetwork's prediction alone, which at this budget is close to an average image)."""
    from finetune.segmentation import run_segmentation
    from minr.build import default_config
    from minr.train import pretrain

    torch.manual_seed(0)
    over = {"data.root": str(fashion_small), "train.max_steps": 40, "train.epochs": None, "train.batch_size": 32}
    over |= {"optim.lr": 1e-3, "optim.warmup_fraction": 0.0}  # the pretraining the test was measured with
    pretrain(default_config("ginr_tiny", {**over, "train.val_max_images": 32}), tmp_path / "pre", progress=False)
    scenes = make_fashion_scenes(tmp_path / "sc", n_train=64, n_val=24, data_root=str(fashion_small))
    cfg = SegConfig(
        ckpts=(str(tmp_path / "pre" / "checkpoint.safetensors"),),
        dataset=f"fashion-scenes:{scenes}",
        regime="frozen",
        backbones=("inr",),
        inr_fit_steps=10,
        max_steps=80,
        batch_size=8,
        lr=1e-2,
    )
    res = run_segmentation(cfg, tmp_path / "out", progress=False)
    info = segdata.resolve(f"fashion-scenes:{scenes}")
    floor = _all_background_miou(segdata.build_dataset(info, "val", in_chans=1))
    inr = res.entries[0]
    assert inr.feature == "inr" and inr.inr_fit_steps == 10 and inr.mean > floor + 0.01, (inr.mean, floor)
    garments = [v for c, v in inr.per_class_IoU.items() if c != "background" and v]
    assert inr.per_class_IoU["background"] > 0.6 and len(garments) >= 1, inr.per_class_IoU  # some garment found
