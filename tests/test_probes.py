import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from minr.config import DataConfig
from minr.errors import MinrError
from minr.models import MODEL_CLASSES
from probes.extract import ExtractSpec, extract
from probes.knn import knn_predict
from probes.linear import linear_probe
from probes.stats import mcnemar_p, paired_bootstrap
from tests.conftest import make_checkpoint

DIGITS = DataConfig(name="digits", max_images=60)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {m: make_checkpoint(m, d / m / "checkpoint.safetensors") for m in ("ginr_tiny", "transinr_tiny", "mae_tiny")}


@pytest.mark.parametrize("model", ["ginr_tiny", "transinr_tiny", "mae_tiny"])
def test_extraction_shapes_for_every_kind(model, ckpts, tmp_path):
    family = "mae" if model.startswith("mae") else "minr"
    dims = {
        "data_mean": 128,
        "weight_mean": 128,
        "cls": 128,
        "patch_mean": 128,
        "concat": 256,
        "modulation": 64 if model == "ginr_tiny" else 4 * 64 + 64,
    }
    if family == "minr":
        dims["concat"] = 256 + dims["modulation"]
    for kind in MODEL_CLASSES[family].kind_names():
        fs = extract(
            ExtractSpec(str(ckpts[model]), DIGITS, "train", kind), tmp_path, progress=False, log=lambda m: None
        )
        assert fs.features.shape == (60, dims[kind]) and fs.labels.shape == (60,)
        assert torch.isfinite(fs.features).all()
    mid = extract(
        ExtractSpec(str(ckpts[model]), DIGITS, "val", MODEL_CLASSES[family].kind_names()[0], layer=1),
        tmp_path,
        progress=False,
        log=lambda m: None,
    )
    assert mid.features.shape[1] == 128


def test_cache_hit_and_invalidation(ckpts, tmp_path):
    logs = []
    spec = ExtractSpec(str(ckpts["mae_tiny"]), DIGITS, "test", "cls")
    first = extract(spec, tmp_path, progress=False, log=logs.append)
    second = extract(spec, tmp_path, progress=False, log=logs.append)
    assert not first.cached and second.cached and "cache hit" in logs[-1]
    assert torch.equal(first.features, second.features)
    keys = {first.key.to_json()}
    other = make_checkpoint("mae_tiny", tmp_path / "other.safetensors", seed=1)
    variants = [
        ExtractSpec(str(other), DIGITS, "test", "cls"),  # other weights
        ExtractSpec(str(ckpts["mae_tiny"]), DIGITS, "test", "cls", mask_ratio=0.5),  # masked
        ExtractSpec(str(ckpts["mae_tiny"]), DataConfig(name="digits", max_images=61), "test", "cls"),
        ExtractSpec(str(ckpts["mae_tiny"]), DIGITS, "test", "patch_mean"),
    ]
    for v in variants:
        fs = extract(v, tmp_path, progress=False, log=logs.append)
        assert not fs.cached
        keys.add(fs.key.to_json())
    assert len(keys) == 5
    pix = [ExtractSpec("pixels", DIGITS, "test", image_size=s) for s in (28, 16)]  # transform changes the key
    assert extract(pix[0], tmp_path, progress=False).key != extract(pix[1], tmp_path, progress=False).key


def test_all_kinds_from_one_pass_match_one_kind_at_a_time(ckpts, tmp_path, monkeypatch):
    from minr.models import HyperINR
    from probes.extract import extract_kinds

    calls = []
    real = HyperINR.get_intermediate_layers
    monkeypatch.setattr(HyperINR, "get_intermediate_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    kinds = list(MODEL_CLASSES["minr"].kind_names())
    spec = ExtractSpec(str(ckpts["transinr_tiny"]), DIGITS, "test", batch_size=64)
    together = extract_kinds(spec, kinds, tmp_path / "a", progress=False, log=lambda m: None)
    assert len(calls) == 1  # 60 images, one batch, one forward pass for the four kinds
    for kind, fs in zip(kinds, together, strict=True):
        alone = extract(
            ExtractSpec(str(ckpts["transinr_tiny"]), DIGITS, "test", kind),
            tmp_path / "b",
            progress=False,
            log=lambda m: None,
        )
        assert fs.key == alone.key and torch.allclose(fs.features, alone.features)
    again = extract_kinds(spec, kinds, tmp_path / "a", progress=False, log=lambda m: None)
    assert all(fs.cached for fs in again) and len(calls) == 1 + len(kinds)


def test_stale_or_truncated_cache_is_recomputed(ckpts, tmp_path):
    spec = ExtractSpec(str(ckpts["ginr_tiny"]), DIGITS, "val", "data_mean")
    good = extract(spec, tmp_path, progress=False, log=lambda m: None)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:50])
    logs = []
    again = extract(spec, tmp_path, progress=False, log=logs.append)
    assert not again.cached and "recomputing" in logs[0] and torch.allclose(again.features, good.features)


def test_errors_for_unknown_kind_and_multilabel(ckpts, tmp_path):
    with pytest.raises(MinrError, match="'cls' does not exist for minr"):
        extract(ExtractSpec(str(ckpts["ginr_tiny"]), DIGITS, "train", "cls"), tmp_path, progress=False)
    with pytest.raises(MinrError, match="modulation"):
        extract(ExtractSpec(str(ckpts["ginr_tiny"]), DIGITS, "train", "modulation", layer=0), tmp_path, progress=False)


def test_multilabel_dataset_is_refused_by_the_probe(ckpts, tmp_path):
    from probes.run import ProbeConfig, run_probe
    from tests.conftest import save_images

    base = tmp_path / "celeba"
    names = save_images(base / "img_align_celeba", [f"{i:06d}" for i in range(1, 7)])
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names, "000122", strict=True)))
    (base / "list_attr_celeba.txt").write_text("6\nSmiling\n" + "".join(f"{n} 1\n" for n in names))
    cfg = ProbeConfig(
        ckpts=(str(ckpts["mae_tiny"]),), data=DataConfig(name=f"celeba:{tmp_path}"), cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(MinrError, match="multi-label"):
        run_probe(cfg, tmp_path / "out", progress=False, log=lambda m: None)


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 6, generator=g), torch.randn(7, 6, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    got = knn_predict(train, labels, test, num_classes=3, k=5, temperature=0.1, chunk=3)
    for i in range(7):
        sims = torch.nn.functional.cosine_similarity(test[i][None], train)
        ref = torch.zeros(3)
        for j in sims.argsort(descending=True)[:5]:
            ref[labels[j]] += torch.exp(sims[j] / 0.1)
        assert torch.allclose(got[i], ref, rtol=1e-4)


def _blobs(n, seed, flip=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.eye(4, 16) * 4
    x = centres[y] + torch.randn(n, 16, generator=g)
    return x, (y.flip(0) if flip else y)


@pytest.mark.parametrize("solver", ["torch", "sklearn"])
def test_linear_probe_on_separable_features(solver):
    r = linear_probe(_blobs(400, 0), _blobs(100, 1), _blobs(200, 2), 4, solver=solver)
    assert r.accuracy > 0.97 and r.selection_accuracy > 0.97


def test_selection_never_looks_at_test():
    """Garbage test labels and NaN test features change nothing about what is chosen."""
    a = linear_probe(_blobs(300, 0), _blobs(100, 1), _blobs(100, 2), 4, epochs=5)
    x, y = _blobs(100, 2, flip=True)
    b = linear_probe(_blobs(300, 0), _blobs(100, 1), (torch.full_like(x, float("nan")), y), 4, epochs=5)
    assert a.chosen == b.chosen and a.selection_accuracy == b.selection_accuracy


def test_paired_statistics_hand_computed():
    a = np.array([1, 1, 1, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 1, 0], bool)
    assert mcnemar_p(a, b) == pytest.approx(0.25)  # 3 discordant pairs, all one way: 2 * 0.5**3
    assert mcnemar_p(a, a) == 1.0
    d, lo, hi = paired_bootstrap(a, b)
    assert d == pytest.approx(0.5) and lo <= d <= hi and lo > 0
    assert paired_bootstrap(a, a)[1:] == (0.0, 0.0)
    c = np.array([1] * 10 + [0] * 10, bool)
    assert mcnemar_p(c, ~c) == pytest.approx(1.0)  # 10 vs 10 discordant


@pytest.mark.slow
def test_probe_cli_end_to_end(ckpts, tmp_path, fashion_small):
    runner = CliRunner()
    args = [
        "probe",
        "--task",
        "classification",
        "--ckpt",
        str(ckpts["ginr_tiny"]),
        "--ckpt",
        str(ckpts["mae_tiny"]),
        "--dataset",
        "fashion-mnist",
        "--data-root",
        str(fashion_small),
        "--max-images",
        "120",
        "--seeds",
        "2",
        "--epochs",
        "3",
        "--mask-ratios",
        "0,0.5",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    names = [e["name"] for e in res["entries"]]
    assert names == ["pixels", "ginr_tiny:data_mean", "mae_tiny:cls"]
    assert len(res["entries"][1]["linear"]["per_seed"]) == 2 and res["paired"][0]["a"] == "ginr_tiny:data_mean"
    assert res["paired"][0]["test"] == "mcnemar" and 0 <= res["paired"][0]["p"] <= 1
    assert {r["mask_ratio"] for r in res["mask_sweep"]} == {0.0, 0.5}
    assert (tmp_path / "out" / "mask_sweep.png").stat().st_size > 1000
    preds = np.load(tmp_path / "out" / "predictions.npz", allow_pickle=False)
    assert preds["labels"].shape == (120,) and "mae_tiny:cls|knn" in preds.files
    r = runner.invoke(main, args[:-3] + ["--select-on", "test", "--out", str(tmp_path / "o2"), "--quiet"])
    assert r.exit_code == 0 and "cache hit" in r.output
    assert "selected on TEST" in (tmp_path / "o2" / "results.md").read_text()
    r = runner.invoke(
        main,
        [
            "probe",
            "--ckpt",
            str(ckpts["ginr_tiny"]),
            "--dataset",
            "digits",
            "--mask-ratios",
            "0,x",
            "--out",
            str(tmp_path / "o3"),
        ],
    )
    assert r.exit_code == 2 and "--mask-ratios" in r.output


def test_no_choice_depends_on_test_labels(ckpts, tmp_path, monkeypatch):
    """Each encoder's feature kind and each probe's hyper-parameters are chosen on validation: scrambling the
    test labels changes test accuracies and nothing that was chosen."""
    import probes.run as run
    from probes.run import ProbeConfig, run_probe

    def probe(tag):
        cfg = ProbeConfig(
            ckpts=(str(ckpts["ginr_tiny"]), str(ckpts["mae_tiny"])),
            data=DIGITS,
            kinds=("all",),
            seeds=2,
            epochs=1,
            cache_dir=str(tmp_path / tag / "cache"),
        )
        return run_probe(cfg, tmp_path / tag / "out", progress=False, log=lambda m: None)

    clean = probe("clean")
    real = run.extract_kinds

    def scrambled(spec, *args, **kwargs):
        sets = real(spec, *args, **kwargs)
        if spec.split != "test":
            return sets
        perm = torch.randperm(len(sets[0].labels), generator=torch.Generator().manual_seed(1))
        return [dataclasses.replace(fs, labels=fs.labels[perm]) for fs in sets]

    monkeypatch.setattr(run, "extract_kinds", scrambled)
    bad = probe("scrambled")
    assert clean.best == bad.best and len(clean.best) == 3  # pixels, GINR, MAE
    for a, b in zip(clean.entries, bad.entries, strict=True):
        assert a.linear.val == b.linear.val and a.linear.chosen == b.linear.chosen and a.knn.val == b.knn.val
    assert [e.linear.mean for e in clean.entries] != [e.linear.mean for e in bad.entries]
