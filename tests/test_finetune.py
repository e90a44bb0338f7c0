import json

import pytest
import torch

from minr.build import default_config
from minr.config import DataConfig
from minr.errors import MinrError
from minr.train import pretrain
from tests.conftest import killed_after_first_checkpoint, make_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    return {m: make_checkpoint(m, d / m / "checkpoint.safetensors") for m in ("ginr_tiny", "transinr_tiny", "mae_tiny")}


def test_layer_decay_and_partial_finetuning(ckpts):
    from finetune.classification import _build
    from finetune.configs import FinetuneConfig

    cfg = FinetuneConfig(ckpts=(str(ckpts["mae_tiny"]),), layer_decay=0.5, trainable_blocks=1)
    model = _build(cfg, str(ckpts["mae_tiny"]), 10, torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n in trainable if n.startswith(("encoder.blocks.3.", "encoder.norm.", "fc_norm", "head"))
    }
    assert any(n.startswith("encoder.blocks.3.") for n in trainable) and "head.weight" in trainable
    from minr.optim import layer_decay_groups

    groups = layer_decay_groups(model, model.encoder, prefix="encoder.", weight_decay=0.05, layer_decay=0.5)
    assert sorted({g["lr_scale"] for g in groups}) == [0.5, 1.0]  # block 3 (layer 4) and the top (layer 5)
    with pytest.raises(MinrError, match="trainable-blocks"):
        _build(FinetuneConfig(ckpts=("x",), trainable_blocks=9), str(ckpts["mae_tiny"]), 10, torch.device("cpu"))


@pytest.mark.slow
def test_finetuning_beats_the_frozen_linear_probe(fashion_mid, tmp_path):
    """On a real subset: a briefly pretrained MAE, fine-tuned, beats the linear probe of its frozen features."""
    from finetune.classification import run_finetune
    from finetune.configs import FinetuneConfig
    from probes.run import ProbeConfig, run_probe

    torch.manual_seed(0)
    pretrain(
        default_config(
            "mae_tiny",
            {
                "data.root": str(fashion_mid),
                "train.max_steps": 30,
                "train.batch_size": 64,
                "train.val_max_images": 32,
                "optim.lr": 1e-3,  # the recipe the margin below was measured with, not the preset's current one
            },
        ),
        tmp_path / "pre",
        progress=False,
    )
    ckpt = str(tmp_path / "pre" / "checkpoint.safetensors")
    data = DataConfig(root=str(fashion_mid))
    probe = run_probe(
        ProbeConfig(
            ckpts=(ckpt,),
            data=data,
            methods=("linear",),
            seeds=1,
            pixels_baseline=False,
            cache_dir=str(tmp_path / "cache"),
        ),
        tmp_path / "probe",
        progress=False,
        log=lambda m: None,
    )
    ft = run_finetune(
        FinetuneConfig(ckpts=(ckpt,), data=data, epochs=4, batch_size=64, drop_path=0.0),
        tmp_path / "ft",
        progress=False,
    )
    probe_acc, ft_acc = probe.entries[0].linear.mean, ft.entries[0].mean
    assert ft_acc > probe_acc + 0.02, (ft_acc, probe_acc)  # measured: 0.738 vs 0.696
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["entries"][0]["per_seed"] == [ft_acc]


@pytest.mark.slow
def test_finetune_resume_is_exact(ckpts, tmp_path, monkeypatch):
    """A run that dies right after its first checkpoint, resumed, ends where an uninterrupted run ends."""
    import finetune.classification as fc
    from finetune.configs import FinetuneConfig
    from minr.checkpoint import load_checkpoint, weights_sha256

    cfg = FinetuneConfig(
        ckpts=(str(ckpts["ginr_tiny"]),),
        data=DataConfig(name="digits", max_images=128),
        epochs=2,
        batch_size=16,
        mixup=0.2,
    )
    full = fc.finetune_one(cfg, str(ckpts["ginr_tiny"]), 0, tmp_path / "a", resume=False, progress=False)
    with killed_after_first_checkpoint(monkeypatch):
        fc.finetune_one(cfg, str(ckpts["ginr_tiny"]), 0, tmp_path / "b", resume=False, progress=False)
    assert load_checkpoint(tmp_path / "b" / fc.CKPT).meta["step"] == 8
    with pytest.raises(MinrError, match="--resume"):
        fc.finetune_one(cfg, str(ckpts["ginr_tiny"]), 0, tmp_path / "b", resume=False, progress=False)
    resumed = fc.finetune_one(cfg, str(ckpts["ginr_tiny"]), 0, tmp_path / "b", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / d / fc.CKPT) for d in "ab")
    assert weights_sha256(a.model_state) == weights_sha256(b.model_state)
    assert resumed.test_accuracy == full.test_accuracy
    other = FinetuneConfig(**{**cfg.__dict__, "lr": 1e-4})
    with pytest.raises(MinrError, match="different settings: lr"):
        fc.finetune_one(other, str(ckpts["ginr_tiny"]), 0, tmp_path / "b", resume=True, progress=False)
