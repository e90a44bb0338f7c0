import re

import pytest
import torch

from minr.config import MaskConfig
from minr.errors import MinrError
from minr.masking import make_masks
from minr.models import MAE, Encoder, create_model, get_spec, list_models
from minr.models.mae import patchify, unpatchify
from minr.optim import encoder_layers

TINY = [m for m in list_models() if m.endswith("_tiny")]


def _batch(model, n=3, kind="random"):
    patch = getattr(model, "patch_size", 4)
    x = torch.rand(n, model.in_chans, model.image_size, model.image_size)
    mask = make_masks(range(n), MaskConfig(kind=kind, patch=patch), model.image_size, seed=0, salt="t")
    return x, mask, patch


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = create_model(name)
    x, mask, patch = _batch(model)
    out = model(x, mask, patch)
    assert out.recon.shape == x.shape and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


@pytest.mark.parametrize(
    "name, count",
    [
        ("transinr_paper", 44_462_851),
        ("ginr_paper", 43_746_371),
        ("mae_base_paper", 111_642_700),
        ("mae_large_paper", 329_223_756),
    ],
)
def test_paper_parameter_counts(name, count):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("name", list_models())
def test_the_registry_declares_what_each_preset_builds(name):
    """`minrctl models` lists the declared family and parameter count without building anything: they must be what
    the preset builds (change the declaration with the architecture)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = create_model(name)
    built = sum(p.numel() for p in model.parameters())
    assert (spec.params, spec.family) == (built, model.family), f"{name} builds {built:,} parameters"
    assert type(model) is spec.model_class and model.args == spec.args


@pytest.mark.parametrize("name", list_models())
def test_every_model_implements_the_encoder_interface(name):
    """Shapes of every part of the interface, on the meta device for the paper presets (no memory)."""
    tiny = name.endswith("_tiny")
    with torch.device("cpu" if tiny else "meta"):
        model = create_model(name).eval()
        assert isinstance(model, Encoder)
        info = model.info()
        x = torch.rand(2, info.in_chans, info.image_size, info.image_size)
        h, w = model.token_grid(info.image_size, info.image_size)
        feats = model.features(x, model.kind_names())
        assert set(feats) == set(model.kind_names()) and all(f.shape[0] == 2 for f in feats.values())
        token_kinds = [k.name for k in model.FEATURE_KINDS if k.token_pool]
        assert model.FINETUNE_KIND in token_kinds and all(feats[k].shape[1] == info.width for k in token_kinds)
        maps = model.forward_intermediates(x, [0, info.depth - 1])
        assert [m.shape for m in maps] == [(2, info.width, h, w)] * 2
        assert model.forward_features(x).shape[-1] == info.width
        if info.dense_levels:
            dense = model.dense_features(x, (0, info.dense_levels - 1))
            assert [d.shape for d in dense] == [(2, info.dense_width, info.image_size, info.image_size)] * 2
        else:
            with pytest.raises(MinrError, match="no per-pixel features"):
                model.dense_features(x, (0,))
    layers = encoder_layers(model)
    assert {layers[n] for n, _ in model.named_parameters() if n.startswith("blocks.0.")} == {1}
    assert all(layers[n] == 0 for n, _ in model.named_parameters() if re.match(model.STEM, n))


@pytest.mark.parametrize("name", TINY)
def test_features_pool_the_block_outputs(name):
    model = create_model(name).eval()
    x, mask, patch = _batch(model)
    tokens = model.forward_features(x)
    layers = model.get_intermediate_layers(x, 2)
    assert len(layers) == 2 and torch.allclose(layers[1], tokens, atol=1e-5)
    first = model.features(x, [model.FINETUNE_KIND], layer=0)[model.FINETUNE_KIND]
    assert torch.allclose(
        first,
        model.pool(
            layers[0] if model.info().depth == 2 else model.get_intermediate_layers(x, [0])[0],
            model.FINETUNE_KIND,
            last_block=False,
        ),
    )
    masked = model.features(x, [model.FINETUNE_KIND], mask=mask, mask_patch=patch)[model.FINETUNE_KIND]
    assert not torch.allclose(masked, model.features(x, [model.FINETUNE_KIND])[model.FINETUNE_KIND])
    with pytest.raises(MinrError, match="--layer 9 does not exist"):
        model.features(x, [model.FINETUNE_KIND], layer=9)
    with pytest.raises(MinrError, match="does not exist for"):
        model.features(x, ["dat_mean"])


def test_evaluators_use_only_the_interface():
    """probes/ and finetune/ import no model class, never branch on a model's family and never read model internals.
    (export.py is the exception for families: it maps one architecture onto another library's.)"""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for path in [*root.glob("probes/*.py"), *root.glob("finetune/*.py")]:
        text = path.read_text()
        imports = [ln for ln in text.splitlines() if "import" in ln and re.search(r"\b(HyperINR|MAE)\b", ln)]
        assert not imports, (path, imports)
        if path.name != "export.py":
            assert not re.search(r"family\s*[!=]=\s*[\"'](minr|mae)", text), path
        assert not re.search(r"\.(layer_shapes|modulations|token_groups|num_weight_tokens)\b", text), path


def test_minr_renders_at_any_resolution():
    model = create_model("ginr_tiny").eval()
    x, mask, patch = _batch(model)
    with torch.no_grad():
        big = model.reconstruct(x, mask, patch, size=56)
        native = model.reconstruct(x, mask, patch)
    assert big.shape == (3, 1, 56, 56) and native.shape == (3, 1, 28, 28)


def test_patchify_roundtrip():
    x = torch.rand(2, 3, 28, 28)
    p = patchify(x, 4)
    assert p.shape == (2, 49, 48)
    assert torch.equal(unpatchify(p, 4, 3), x)
    assert torch.equal(p[0, 1].view(4, 4, 3)[:, :, 0], x[0, 0, :4, 4:8])


def test_mae_padding_matches_single_image():
    """With per-cell masks, images keep different patch counts; padded attention must not change any image."""
    model: MAE = create_model("mae_tiny").eval()
    x, mask, patch = _batch(model, n=4, kind="bernoulli")
    assert mask.flatten(1).sum(1).unique().numel() > 1
    with torch.no_grad():
        batched = model(x, mask, patch).recon
        alone = torch.cat([model(x[i : i + 1], mask[i : i + 1], patch).recon for i in range(4)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_mae_loss_only_on_masked_patches():
    model = create_model("mae_tiny")
    x, mask, patch = _batch(model)
    out = model(x, mask, patch)
    target = patchify(x, 4)
    pred = patchify(out.recon, 4)
    m = mask.flatten(1)
    assert torch.allclose(out.loss, ((pred - target) ** 2).mean(-1)[m].mean(), atol=1e-6)


def test_minr_input_is_zero_filled():
    """Masked pixels carry no information: changing them does not change the MINR reconstruction."""
    model = create_model("transinr_tiny").eval()
    x, mask, patch = _batch(model)
    noisy = x.clone()
    from minr.masking import to_pixels

    px = to_pixels(mask, patch, 28).expand_as(x)
    noisy[px] = torch.rand(int(px.sum()))
    with torch.no_grad():
        assert torch.allclose(model(x, mask, patch).recon, model(noisy, mask, patch).recon)


@pytest.mark.parametrize("kind", ["finetune", "segmentation"])
def test_inspect_finds_the_encoder_where_finetune_declares_it(kind, tmp_path):
    """Fine-tuning and segmentation checkpoints keep the encoder where finetune's modules put it (their declared
    prefixes, which the core does not know); `minrctl inspect` checks those tensors, and the same file read with
    another prefix does not fit."""
    import json

    from click.testing import CliRunner

    from cli.main import main
    from finetune.classifier import EncoderClassifier
    from finetune.seg_backbone import SEGMENTOR_ENCODER_PREFIX, MinrBackbone
    from minr.build import verify_tensors
    from minr.checkpoint import checkpoint_meta, save_checkpoint

    if kind == "finetune":
        state = EncoderClassifier(create_model("ginr_tiny"), 10, kind="data_mean").state_dict()
        prefix = EncoderClassifier.ENCODER_PREFIX
    else:  # an mmseg segmentor holds the backbone at `backbone`, beside its heads
        state = {f"backbone.{k}": v for k, v in MinrBackbone(model_name="ginr_tiny").state_dict().items()}
        state["decode_head.conv_seg.weight"] = torch.zeros(3, 8, 1, 1)
        prefix = SEGMENTOR_ENCODER_PREFIX
    assert sum(k.startswith(prefix) for k in state) == len(create_model("ginr_tiny").state_dict())
    path = tmp_path / "c.safetensors"
    meta = checkpoint_meta(
        kind, model="ginr_tiny", model_args={}, family="minr", config={}, step=0, epoch=0, git_sha="test"
    )
    save_checkpoint(path, model_state=state, meta=meta)
    r = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["kind"] == kind
    assert verify_tensors(str(path), prefix=prefix)["kind"] == kind
    with pytest.raises(MinrError, match="its tensors do not fit ginr_tiny"):
        verify_tensors(str(path), prefix="")


@pytest.mark.parametrize("name", ["ginr_tiny", "transinr_tiny"])
def test_test_time_fitting_makes_the_inr_render_its_image(name, fashion_small):
    """A few Adam steps from the hypernetwork's prediction: each image's INR renders it much better, each image is
    fitted on its own (batch-independent), shared layers stay shared, and gradients still reach the hypernetwork."""
    from minr import inr
    from minr.config import DataConfig
    from minr.data import load_split

    torch.manual_seed(0)
    model = create_model(name).eval()
    data = load_split(DataConfig(name="fashion-mnist", root=str(fashion_small)), "test", image_size=28, in_chans=1)
    x = torch.stack([data[i][0] for i in range(4)])
    feats = inr.fourier_features(inr.coord_grid(28, 28), model.freqs.float())
    target = x.flatten(2).transpose(1, 2)
    predicted = model.predict_weights(model.encode(x))
    fitted = model.fit_weights(feats, predicted, x, steps=30)

    def mse(weights):
        return ((inr.render_mlp(feats, weights, list(model.biases)) - target) ** 2).mean((1, 2))

    assert bool((mse(fitted) < 0.5 * mse(predicted)).all()), (mse(fitted), mse(predicted))
    assert all(f is p for f, p in zip(fitted, predicted, strict=True) if p.dim() == 2)  # shared layers untouched
    alone = model.fit_weights(feats, [w[:1] if w.dim() == 3 else w for w in predicted], x[:1], steps=30)
    assert all(torch.allclose(a, f[:1], atol=1e-5) for a, f in zip(alone, fitted, strict=True) if f.dim() == 3)
    assert torch.equal(model.pixel_features(x, (1,), fit_steps=0)[0], model.pixel_features(x, (1,))[0])
    model.pixel_features(x, (1,), fit_steps=5)[0].square().sum().backward()
    assert any(p.grad is not None and p.grad.any() for p in model.heads.parameters())
