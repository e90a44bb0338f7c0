import numpy as np
import pytest
import torch

from minr.config import DataConfig
from minr.data import load_split
from minr.errors import MinrError
from tests.conftest import save_images


def _all(cfg, size=32, chans=3):
    return {s: load_split(cfg, s, image_size=size, in_chans=chans) for s in ("train", "val", "test")}


def test_fashion_mnist_from_idx_files(fashion_small):
    d = _all(DataConfig(root=str(fashion_small)), size=28, chans=1)
    assert (len(d["train"]), len(d["val"]), len(d["test"])) == (576, 64, 200)
    img, label, idx = d["train"][3]
    assert img.shape == (1, 28, 28) and img.min() >= 0 and img.max() <= 1 and idx == 3 and 0 <= label < 10
    # val is carved with a fixed seed, disjoint from train, the same every time
    again = load_split(DataConfig(root=str(fashion_small)), "val", image_size=28, in_chans=1)
    assert again.fingerprint() == d["val"].fingerprint() != d["train"].fingerprint()
    # resized and converted to RGB for a 32 px RGB model
    assert load_split(DataConfig(root=str(fashion_small)), "test", image_size=32, in_chans=3)[0][0].shape == (3, 32, 32)


def test_fashion_mnist_missing_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("MINR_OFFLINE", "1")
    monkeypatch.setenv("MINR_DATA", str(tmp_path / "env"))
    monkeypatch.setattr("minr.sources.DEBIAN_FASHION_MNIST", str(tmp_path / "nowhere"))
    from minr.data import _sources

    _sources.cache_clear()  # an earlier test (a dry run) may have read the system copy under the same config
    with pytest.raises(MinrError, match="apt-get install -y dataset-fashion-mnist") as e:
        load_split(DataConfig(), "train", image_size=28, in_chans=1)
    assert str(tmp_path / "env") in str(e.value) and str(tmp_path / "nowhere") in str(e.value)


def test_explicit_data_root_is_never_replaced_by_another_copy(tmp_path, fashion_small):
    """An explicit --data-root that holds nothing is an error even when the system copy exists."""
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(MinrError, match=f"--data-root {root}: no Fashion-MNIST there"):
            load_split(DataConfig(root=str(root)), "train", image_size=28, in_chans=1)


def test_digits_and_max_images_stratified():
    d = load_split(DataConfig(name="digits", max_images=50), "train", image_size=16, in_chans=1)
    assert len(d) == 50 and d[0][0].shape == (1, 16, 16)
    assert len(np.unique(d.source.labels)) == 10


def test_imagefolder_layout(imagefolder):
    d = _all(DataConfig(name=f"imagefolder:{imagefolder}", val_fraction=0.25))
    assert (len(d["train"]), len(d["val"]), len(d["test"])) == (9, 3, 6)
    assert d["test"].classes == ("n01440764", "n02102040")
    img, label, _ = d["test"][5]
    assert img.shape == (3, 32, 32) and label == 1


def test_indoor67_layout(tmp_path):
    rels = {}
    for c in ("bar", "kitchen"):
        rels[c] = [f"{c}/{n}" for n in save_images(tmp_path / "Images" / c, [f"{c}{i}" for i in range(5)])]
    (tmp_path / "TrainImages.txt").write_text("\n".join(rels["bar"][:4] + rels["kitchen"][:4]) + "\n")
    (tmp_path / "TestImages.txt").write_text("\n".join([rels["bar"][4], rels["kitchen"][4]]))
    d = _all(DataConfig(name=f"indoor67:{tmp_path}", val_fraction=0.25))
    assert (len(d["train"]), len(d["val"]), len(d["test"])) == (6, 2, 2)
    assert [int(d["test"][i][1]) for i in range(2)] == [0, 1]


def test_celeba_layout(tmp_path):
    base = tmp_path / "celeba"
    names = save_images(base / "img_align_celeba", [f"{i:06d}" for i in range(1, 7)])
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{n} {s}\n" for n, s in zip(names, [0, 0, 0, 1, 2, 2], strict=False))
    )
    attrs = "5_o_Clock_Shadow Smiling"
    rows = "".join(f"{n} {1 if i % 2 else -1} -1\n" for i, n in enumerate(names))
    (base / "list_attr_celeba.txt").write_text(f"{len(names)}\n{attrs}\n{rows}")
    d = _all(DataConfig(name=f"celeba:{tmp_path}"))
    assert (len(d["train"]), len(d["val"]), len(d["test"])) == (3, 1, 2)
    assert d["train"].multilabel and d["train"].classes == ("5_o_Clock_Shadow", "Smiling")
    assert torch.equal(d["train"][1][1], torch.tensor([1, 0]))


def test_corrupt_image_is_named_or_skipped(imagefolder):
    bad = imagefolder / "val" / "n01440764" / "broken.JPEG"
    bad.write_bytes(b"not an image at all")
    cfg = DataConfig(name=f"imagefolder:{imagefolder}")
    test = load_split(cfg, "test", image_size=32, in_chans=3)
    with pytest.raises(MinrError, match="broken.JPEG"):
        [test[i] for i in range(len(test))]
    with pytest.warns(UserWarning, match="skipping 1 unreadable"):
        ok = load_split(DataConfig(name=cfg.name, skip_bad_images=True), "test", image_size=32, in_chans=3)
    assert len(ok) == len(test) - 1


@pytest.mark.parametrize(
    "name, message",
    [("imagefolder:/no/such/dir", "does not exist"), ("mnist", "unknown dataset"), ("indoor67:/tmp", "Images")],
)
def test_bad_dataset_names(name, message):
    with pytest.raises(MinrError, match=message):
        load_split(DataConfig(name=name), "train", image_size=28, in_chans=1)


def test_empty_folder(tmp_path):
    (tmp_path / "classA").mkdir()
    with pytest.raises(MinrError, match="no images found"):
        load_split(DataConfig(name=f"imagefolder:{tmp_path}"), "train", image_size=28, in_chans=1)
