import math

import pytest
import torch

from minr import inr
from minr.metrics import psnr_from_mse
from tests.conftest import photo_crops


def test_coord_grid_pixel_centres():
    c = inr.coord_grid(4, 2)
    assert c.shape == (8, 2)
    assert torch.allclose(c[0], torch.tensor([-0.75, -0.5])) and torch.allclose(c[-1], torch.tensor([0.75, 0.5]))
    big = inr.coord_grid(182, 182)
    assert big.min() > -1 and big.max() < 1
    assert torch.allclose(big[:, 0].mean(), torch.tensor(0.0), atol=1e-6)


def test_fourier_features():
    f = inr.fourier_frequencies(64, 1024)
    assert f[0] == 1 and math.isclose(f[-1].item(), 1024, rel_tol=1e-5)
    feats = inr.fourier_features(inr.coord_grid(3, 3), f)
    assert feats.shape == (9, 256)
    assert torch.allclose(feats[:, :128] ** 2 + feats[:, 128:] ** 2, torch.ones(9, 128))


def test_shared_and_per_image_layers_agree():
    x = torch.randn(10, 8)
    w = [torch.randn(8, 6), torch.randn(6, 3)]
    b = [torch.randn(6), torch.randn(3)]
    shared = inr.render_mlp(x, w, b)
    per_image = inr.render_mlp(x, [w[0].expand(2, -1, -1), w[1]], b)
    ref = torch.relu(x @ w[0] + b[0]) @ w[1] + b[1] + 0.5
    assert torch.allclose(shared[0], ref, atol=1e-5) and torch.allclose(per_image[1], ref, atol=1e-5)
    assert inr.render_mlp(x, w, b, hidden_layers=(0,))[0].shape == (1, 10, 6)


def test_inr_overfits_one_real_image():
    """The Fourier-feature INR with normalised columns fits a real 32x32 photo crop past 30 dB."""
    img = torch.from_numpy(photo_crops(1, 32)[0]).float().div(255).reshape(-1, 3)  # (Q, 3)
    freqs = inr.fourier_frequencies(16, 32)
    feats = inr.fourier_features(inr.coord_grid(32, 32), freqs)
    dims = [64, 128, 128, 128, 128, 3]
    ws = [torch.nn.Parameter(torch.randn(i, o) / math.sqrt(i)) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    bs = [torch.nn.Parameter(torch.zeros(o)) for o in dims[1:]]
    opt = torch.optim.Adam([*ws, *bs], lr=3e-3)
    for _ in range(600):
        pred = inr.render_mlp(feats, [inr.normalize_columns(w) for w in ws], bs)[0]
        loss = torch.nn.functional.mse_loss(pred, img)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert psnr_from_mse(loss.detach()) > 30


def reference_mlp(x, weights, biases):
    """The INR written plainly: x @ W + b, ReLU between layers, +0.5 on the output; every layer per image."""
    batch = next((w.shape[0] for w in weights if w.dim() == 3), 1)
    x = x.expand(batch, *x.shape) if x.dim() == 2 else x
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        x = x @ w + b
        if i < len(weights) - 1:
            x = torch.relu(x)
    return x + 0.5


@pytest.mark.parametrize("per_image", [[], [1], [0, 1, 2, 3, 4]])
def test_fast_render_gives_the_reference_output_and_gradients(per_image):
    g = torch.Generator().manual_seed(0)
    dims = [16, 32, 32, 32, 32, 3]
    ws = [
        (torch.randn(2, i, o, generator=g) if k in per_image else torch.randn(i, o, generator=g))
        .div(i**0.5)
        .requires_grad_()
        for k, (i, o) in enumerate(zip(dims[:-1], dims[1:], strict=True))
    ]
    bs = [torch.randn(o, generator=g).requires_grad_() for o in dims[1:]]
    x = torch.randn(50, 16, generator=g)
    fast, ref = inr.render_mlp(x, ws, bs), reference_mlp(x, ws, bs)
    assert torch.allclose(fast.expand_as(ref), ref, atol=1e-5)
    gf = torch.autograd.grad(fast.square().mean(), ws + bs)
    gr = torch.autograd.grad(ref.square().mean(), ws + bs)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gf, gr, strict=True))


@pytest.mark.parametrize("name", ["ginr_tiny", "transinr_tiny"])
def test_models_give_the_reference_loss_and_gradients(name, monkeypatch):
    """The whole training loss and every parameter's gradient, fast INR path against the plain one, to 1e-5."""
    from minr import masking
    from minr.config import MaskConfig
    from minr.models import create_model

    model = create_model(name).eval()  # no dropout: the two passes must see the same network
    x = torch.rand(3, 1, 28, 28)
    mask = masking.make_masks(range(3), MaskConfig(patch=4), 28, seed=0, salt="t")

    def loss_and_grads():
        model.zero_grad()
        loss = model(x, mask, 4).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast = loss_and_grads()
    monkeypatch.setattr(inr, "render_mlp", lambda x, w, b, hidden_layers=None: reference_mlp(x, w, b))
    ref = loss_and_grads()
    assert abs(fast[0] - ref[0]) < 1e-5 and len(fast[1]) == len(ref[1])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast[1], ref[1], strict=True))
