"""Masks on a grid of square cells, one function for every method.

Each image's mask is drawn from its own `torch.Generator`, seeded by (seed, salt, image index): the same image
gets the same mask under MINR and MAE, under any batch size, worker count or number of DDP ranks.
MINR consumes a mask as zero-filled pixels (`to_pixels` + `zero_fill`), MAE as dropped tokens (the cell grid is
its patch grid). Masks are boolean, True = masked.
"""

from __future__ import annotations

import math

import torch

from minr.config import MaskConfig
from minr.runtime import keyed_generator


def num_masked(num_cells: int, ratio: float) -> int:
    """MAE's count: `L - int(L * (1 - ratio))` cells are masked."""
    return num_cells - int(num_cells * (1 - ratio))


def grid_shape(image_size: int, patch: int) -> tuple[int, int]:
    """(gh, gw) cells covering an `image_size` square image; the last row/column may hang over the edge."""
    g = math.ceil(image_size / patch)
    return g, g


def random_mask(grid: tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly `num_masked(L, ratio)` cells, uniformly at random (MAE). Returns (gh, gw) bool."""
    L = grid[0] * grid[1]
    order = torch.randperm(L, generator=generator)
    mask = torch.zeros(L, dtype=torch.bool)
    mask[order[: num_masked(L, ratio)]] = True
    return mask.view(grid)


def bernoulli_mask(grid: tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Each cell masked independently with probability `ratio` (the released MINR code). (gh, gw) bool."""
    return torch.rand(grid, generator=generator) < ratio


def block_mask(grid: tuple[int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Rectangular blocks (BEiT-style, aspect 0.3-3.3) until the exact `num_masked` count is reached."""
    gh, gw = grid
    target = num_masked(gh * gw, ratio)
    mask = torch.zeros(grid, dtype=torch.bool)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    for _ in range(100):
        remaining = target - int(mask.sum())
        if remaining <= 0:
            break
        area = uniform(min(4, remaining), max(4, remaining))
        aspect = math.exp(uniform(math.log(0.3), math.log(1 / 0.3)))
        h = max(1, min(gh, round(math.sqrt(area * aspect))))
        w = max(1, min(gw, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, gh - h + 1, (), generator=generator))
        left = int(torch.randint(0, gw - w + 1, (), generator=generator))
        mask[top : top + h, left : left + w] = True
    return _fix_count(mask, target, generator)


def _fix_count(mask: torch.Tensor, target: int, generator: torch.Generator) -> torch.Tensor:
    """Unmask (or mask) random cells so that exactly `target` are masked."""
    flat = mask.flatten().clone()
    extra = int(flat.sum()) - target
    pool = flat.nonzero().squeeze(1) if extra > 0 else (~flat).nonzero().squeeze(1)
    pick = pool[torch.randperm(len(pool), generator=generator)[: abs(extra)]]
    flat[pick] = extra < 0
    return flat.view(mask.shape)


_KINDS = {"random": random_mask, "bernoulli": bernoulli_mask, "block": block_mask}


def make_masks(
    indices: torch.Tensor | list[int], cfg: MaskConfig, image_size: int, *, seed: int, salt: str
) -> torch.Tensor:
    """Masks for a batch of images identified by dataset index. Returns (B, gh, gw) bool, True = masked."""
    grid = grid_shape(image_size, cfg.patch)
    fn = _KINDS[cfg.kind]
    idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    return torch.stack([fn(grid, cfg.ratio, keyed_generator(seed, salt, i)) for i in idx])


def to_pixels(mask: torch.Tensor, patch: int, image_size: int) -> torch.Tensor:
    """(B, gh, gw) cell mask -> (B, 1, H, W) pixel mask (cells past the image edge are cropped)."""
    px = mask.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return px[:, None, :image_size, :image_size]


def zero_fill(images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """MINR's masked input: masked pixels set to 0. images (B, C, H, W), pixel_mask (B, 1, H, W)."""
    return images.masked_fill(pixel_mask, 0.0)
