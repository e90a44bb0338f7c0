import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from minr import masking
from minr.build import model_from_checkpoint
from minr.config import DataConfig
from minr.data import load_split
from minr.metrics import psnr_protocols
from minr.models import create_model
from probes.recon.evaluate import ReconConfig, adaptation, masks_for
from probes.recon.floors import inpaint_telea, mean_image, nearest_visible
from probes.recon.grid import render_rows
from tests.conftest import make_checkpoint


def test_floors_on_hand_made_images():
    img = torch.zeros(1, 1, 3, 3)
    img[0, 0, 0, 0] = 0.8  # the only visible pixel that is not 0
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 0, 0] = False
    near = nearest_visible(img, mask)
    assert torch.allclose(near, torch.full((1, 1, 3, 3), 0.8))  # every masked pixel copies its nearest visible one
    mask2 = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    mask2[0, 0, :, 2] = True  # the right column is masked; its nearest visible pixels are in the middle column
    img2 = torch.arange(9.0).view(1, 1, 3, 3) / 10
    assert torch.equal(nearest_visible(img2, mask2)[0, 0, :, 2], img2[0, 0, :, 1])
    flat = torch.full((1, 3, 8, 8), 0.4)
    hole = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    hole[0, 0, 3:5, 3:5] = True
    telea = inpaint_telea(flat, hole)
    assert telea is not None and torch.allclose(telea, flat, atol=1 / 255)  # a constant image inpaints to itself
    mean = torch.rand(1, 4, 4)
    assert torch.equal(mean_image(mean, torch.zeros(2, 1, 4, 4), hole[:, :, :4, :4])[1], mean)


def test_masks_depend_on_the_image_not_the_model():
    cfg = ReconConfig(ckpts=("x",))
    a = masks_for(cfg, "digits", "random", 0.75, 4, 28, 10)
    b = masks_for(cfg, "digits", "random", 0.75, 4, 28, 10)
    assert torch.equal(a, b) and torch.equal(masks_for(cfg, "digits", "random", 0.75, 4, 28, 4), a[:4])
    assert not torch.equal(a, masks_for(cfg, "photos", "random", 0.75, 4, 28, 10))
    assert (a.flatten(1).sum(1) == masking.num_masked(49, 0.75)).all()


def test_adaptation_is_named():
    assert adaptation((28, 1), 28, 1) == "native"
    assert adaptation((64, 3), 28, 1) == "resize 64->28 px, RGB->gray"
    assert adaptation((8, 1), 28, 3) == "resize 8->28 px, gray->RGB"


def test_render_at_scale_one_is_what_psnr_scores_and_large_renders_are_chunked():
    model = create_model("ginr_tiny").eval()
    x = torch.rand(3, 1, 28, 28)
    m = masking.make_masks(range(3), masking.MaskConfig(patch=4), 28, seed=0, salt="t")
    with torch.no_grad():
        rows, rendered = render_rows(model, x, m, 4, 1)
        assert rendered == 1 and torch.equal(rows, model.reconstruct(x, m, 4).clamp(0, 1))
        big = model.reconstruct(x, m, 4, size=120)  # 14,400 coordinates: several chunks
        weights = model.predict_weights(model.encode(masking.zero_fill(x, masking.to_pixels(m, 4, 28))))
        from minr import inr

        whole = model.render(inr.coord_grid(120, 120), weights).transpose(1, 2).reshape(3, 1, 120, 120)
    assert torch.allclose(big, whole, atol=1e-5)
    mae = create_model("mae_tiny").eval()
    with torch.no_grad():
        up, rendered = render_rows(mae, x, m, 4, 2)
    assert rendered == 1 and up.shape == (3, 1, 56, 56)


def test_photos_dataset_keeps_its_splits_apart():
    splits = {s: load_split(DataConfig(name="photos"), s, image_size=28, in_chans=1) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1200, 150, 300]
    assert splits["test"][0][0].shape == (1, 28, 28) and set(splits["train"].source.labels.tolist()) == {0, 1}
    again = load_split(DataConfig(name="photos"), "test", image_size=28, in_chans=1)
    assert again.fingerprint() == splits["test"].fingerprint()
    rgb = load_split(DataConfig(name="photos"), "val", image_size=32, in_chans=3)
    assert rgb[0][0].shape == (3, 32, 32)


def test_any_folder_of_images_of_any_size_and_mode(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, mode in enumerate(["RGB", "RGBA", "L", "P", "1", "I;16", "CMYK", "LA"] * 2):
        size = (20 + 7 * i, 30 + 3 * i)
        base = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        img = base.convert("L").point(lambda v: v * 200) if mode == "I;16" else base.convert(mode)
        if mode == "I;16":
            img = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
        img.save(folder / f"img{i}.png" if mode != "CMYK" else folder / f"img{i}.jpg")
    for chans in (1, 3):
        d = load_split(DataConfig(name=f"imagefolder:{folder}"), "train", image_size=24, in_chans=chans)
        assert len(d) > 5 and all(d[i][0].shape == (chans, 24, 24) for i in range(len(d)))
        assert all(d[i][0].min() >= 0 and d[i][0].max() <= 1 for i in range(len(d)))


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory, fashion_small):
    d = tmp_path_factory.mktemp("recon")
    return {
        "ginr": make_checkpoint("ginr_tiny", d / "ginr" / "checkpoint.safetensors", data_root=fashion_small),
        "mae": make_checkpoint("mae_tiny", d / "mae" / "checkpoint.safetensors", data_root=fashion_small),
        "ginr_digits": _on_digits(make_checkpoint("ginr_tiny", d / "gd" / "checkpoint.safetensors"), d),
    }


def _on_digits(path, d):
    """The same architecture, labelled as pretrained on digits: the matrix's second row."""
    from minr.checkpoint import load_checkpoint, save_checkpoint

    c = load_checkpoint(path)
    meta = {**c.meta, "config": {**c.meta["config"], "data": {**c.meta["config"]["data"], "name": "digits"}}}
    save_checkpoint(path, model_state=c.model_state, meta=meta)
    return path


@pytest.mark.slow
def test_reconstruct_cli_end_to_end(two_domains, tmp_path, fashion_small):
    folder = tmp_path / "rgb"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                folder / c / f"{i}.png"
            )
    out = tmp_path / "out"
    ck = [str(two_domains[k]) for k in ("ginr", "mae", "ginr_digits")]
    args = [
        "reconstruct",
        *ck,
        "--dataset",
        "fashion-mnist",
        "--dataset",
        "digits",
        "--dataset",
        f"imagefolder:{folder}",
        "--data-root",
        str(fashion_small),
        "--mask-ratios",
        "0.5,0.75,0.9",
        "--mask-kinds",
        "random,block,bernoulli",
        "--max-images",
        "24",
        "--num-images",
        "3",
        "--scale",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    names = [e["name"] for e in res["entries"]]
    assert names[:3] == ["ginr_tiny", "mae_tiny", "gd/ginr_tiny"] and "floor:nearest_visible" in names
    ginr = res["entries"][0]
    assert ginr["adaptations"] == {
        "fashion-mnist": "native",
        "digits": "resize 8->28 px",
        f"imagefolder:{folder}": "resize 40->28 px, RGB->gray",
    }
    assert len(ginr["cells"]) == 3 * 3 * 3 * 3  # datasets x kinds x ratios x protocols
    # the transfer matrix's cells come from the right checkpoints
    cell = next(
        c
        for c in res["transfer"]
        if c["model"] == "gd/ginr_tiny" and c["evaluated_on"] == "digits" and c["protocol"] == "pasted"
    )
    entry = res["entries"][2]
    assert cell["trained_on"] == "digits" and cell["mean"] == next(
        c["mean"]
        for c in entry["cells"]
        if (c["dataset"], c["kind"], c["ratio"], c["protocol"]) == ("digits", "random", 0.75, "pasted")
    )
    # pairs only within the same pretraining set; verdicts are computed sentences
    assert {(p["comparison"]["a"], p["comparison"]["b"]) for p in res["paired"]} == {("ginr_tiny", "mae_tiny")}
    assert res["verdicts"] and all(v["text"].startswith("ginr_tiny ") for v in res["verdicts"])
    per_image = np.load(out / "per_image.npz")
    assert per_image["ginr_tiny|digits|block|0.9|masked"].shape == (24,)
    # the per-image PSNR is the protocol on the very masks every model got
    model, cfg, _ = model_from_checkpoint(str(two_domains["mae"]))
    data = load_split(DataConfig(name="digits", max_images=24), "test", image_size=28, in_chans=1)
    x = torch.stack([data[i][0] for i in range(len(data))])
    m = masks_for(ReconConfig(ckpts=("x",)), "digits", "block", 0.9, 4, 28, len(x))
    with torch.no_grad():
        want = psnr_protocols(model.reconstruct(x, m, 4), x, masking.to_pixels(m, 4, 28))["masked"].numpy()
    assert np.allclose(per_image["mae_tiny|digits|block|0.9|masked"], want, atol=1e-4)
    md = (out / "results.md").read_text()
    for section in (
        "75% random masking",
        "Margin over the best floor",
        "Robustness",
        "Transfer matrix",
        "Paired MINR - MAE",
    ):
        assert section in md
    for png in ("psnr_vs_ratio_digits_block.png", "transfer_matrix.png", "grid_digits.png"):
        assert (out / png).stat().st_size > 5000


def test_photos_crop_size_is_an_option():
    """`photos:SIZE` crops SIZE px (native detail) instead of 64-px crops scaled to the model; sizes the strips
    cannot hold are refused."""
    from minr.config import DataConfig
    from minr.data import load_split
    from minr.errors import MinrError

    d = load_split(DataConfig(name="photos:28", max_images=20), "test", image_size=28, in_chans=1)
    assert len(d) == 20 and d[0][0].shape == (1, 28, 28) and d.source.arrays.shape[1] == 28
    with pytest.raises(MinrError, match="from 8 to 96"):
        load_split(DataConfig(name="photos:500"), "test", image_size=28, in_chans=1)
