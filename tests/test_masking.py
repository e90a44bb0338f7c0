import torch

from minr import masking
from minr.config import MaskConfig


def test_random_mask_exact_count_and_determinism():
    cfg = MaskConfig(kind="random", ratio=0.75, patch=14)
    m = masking.make_masks(range(16), cfg, 182, seed=3, salt="train")
    assert m.shape == (16, 13, 13)
    assert (m.flatten(1).sum(1) == 169 - int(169 * 0.25)).all()
    assert torch.equal(m, masking.make_masks(range(16), cfg, 182, seed=3, salt="train"))
    assert not torch.equal(m, masking.make_masks(range(16), cfg, 182, seed=4, salt="train"))


def test_mask_depends_on_image_not_batch():
    cfg = MaskConfig(patch=4)
    whole = masking.make_masks([5, 9, 2, 7], cfg, 28, seed=0, salt="train")
    parts = torch.cat(
        [
            masking.make_masks([5, 9], cfg, 28, seed=0, salt="train"),
            masking.make_masks([2, 7], cfg, 28, seed=0, salt="train"),
        ]
    )
    assert torch.equal(whole, parts)


def test_block_mask_exact_count_and_contiguous():
    cfg = MaskConfig(kind="block", ratio=0.5, patch=4)
    m = masking.make_masks(range(20), cfg, 56, seed=0, salt="x")
    assert (m.flatten(1).sum(1) == masking.num_masked(196, 0.5)).all()
    # blocks: masked cells have more masked 4-neighbours than random cells would
    pad = torch.nn.functional.pad(m.float(), (1, 1, 1, 1))
    neigh = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
    assert neigh[m].mean() > 2.5


def test_bernoulli_mask_ratio():
    m = masking.make_masks(range(200), MaskConfig(kind="bernoulli", ratio=0.75, patch=13), 182, seed=0, salt="t")
    assert abs(m.float().mean().item() - 0.75) < 0.01
    assert m.flatten(1).sum(1).unique().numel() > 1  # counts vary per image


def test_pixels_and_zero_fill():
    cell = torch.tensor([[[True, False], [False, True]]])
    px = masking.to_pixels(cell, 3, 5)  # 2x2 cells of 3 px cover 6 px: cropped to 5
    assert px.shape == (1, 1, 5, 5)
    assert px[0, 0, :3, :3].all() and not px[0, 0, :3, 3:].any() and px[0, 0, 3:, 3:].all()
    x = torch.ones(1, 3, 5, 5)
    y = masking.zero_fill(x, px)
    assert y.sum() == 3 * (25 - px.sum())
