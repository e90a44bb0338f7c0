import pytest
import torch

from minr.config import MaskConfig
from minr.masking import make_masks
from minr.models import MAE, create_model, list_models
from minr.models.mae import patchify, unpatchify

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


@pytest.mark.parametrize("name", TINY)
def test_encoder_interface(name):
    model = create_model(name).eval()
    x, mask, patch = _batch(model)
    feats = model.forward_features(x)
    assert feats.shape[0] == 3 and feats.shape[2] == model.embed_dim
    layers = model.get_intermediate_layers(x, 2)
    assert len(layers) == 2 and torch.allclose(layers[1], feats, atol=1e-5)
    groups = model.token_groups()
    assert sum(feats[:, s].shape[1] for s in groups.values()) == feats.shape[1]
    masked = model.forward_features(x, mask=mask, mask_patch=patch)
    assert masked.shape[0] == 3 and not torch.allclose(masked[:, :1], feats[:, :1])


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
