import math

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
