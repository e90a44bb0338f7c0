"""Pure functions of the implicit neural representation: coordinates, Fourier features, the batched MLP.

Keys: B batch, Q query coordinates, F feature width, I/O a layer's input/output width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def coord_grid(height: int, width: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1], `c_i = -1 + 2 (i + 0.5) / n`, row-major. Returns (H*W, 2) as (y, x)."""
    ys = -1 + 2 * (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = -1 + 2 * (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    return torch.cartesian_prod(ys, xs)


def fourier_frequencies(num: int, sigma: float) -> torch.Tensor:
    """`num` log-spaced frequencies in [1, sigma], computed as the official TransINR and GINR code does,
    `exp(linspace(0, ln sigma, num))` in float32 (`logspace` differs by up to 2.4e-4 at sigma = 1024). (num,)."""
    return torch.exp(torch.linspace(0, math.log(sigma), num))


def fourier_features(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(..., Q, 2) coordinates -> (..., Q, 4 * len(freqs)) features `[cos(pi c w), sin(pi c w)]` for both axes,
    multiplied in the official order, `(c * w) * pi`, so the features match it to the last bit."""
    x = (coords[..., :, None] * freqs) * math.pi  # (..., Q, 2, nf)
    x = x.flatten(-2)  # (..., Q, 2 nf)
    return torch.cat([torch.cos(x), torch.sin(x)], dim=-1)


def normalize_columns(weight: torch.Tensor) -> torch.Tensor:
    """L2-normalise each output column over the input dimension. (..., I, O) -> (..., I, O)."""
    return F.normalize(weight, dim=-2)


class _MatMul(torch.autograd.Function):
    """x @ w whose weight gradient is computed as (g^T x)^T rather than x^T g: the same sum, but CPU BLAS runs the
    thin output layer's (I x O = 256 x 3 over 132,496 rows) 3x faster that way (measured 147 ms -> 48 ms)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            # keep what autocast multiplies, as torch's own matmul does
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), w.to(dtype)
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = g @ w.transpose(-1, -2) if ctx.needs_input_grad[0] else None
        gw = (g.transpose(-1, -2) @ x).transpose(-1, -2) if ctx.needs_input_grad[1] else None
        return gx, gw


def render_mlp(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    *,
    hidden_layers: tuple[int, ...] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Run the INR: ReLU between layers, +0.5 on the output (docs/METHOD.md#shared-architecture).

    x: (Q, F) features shared by the batch, or (B, Q, F). weights[l]: shared (I, O) or per image (B, I, O);
    biases[l]: (O,). Shared layers on a shared input run once for the whole batch. Returns (B, Q, O_last), or
    with `hidden_layers` the ReLU activations after those layers, each (B, Q, O_k): dense per-pixel features.
    """
    last = len(weights) - 1
    batch = next((w.shape[0] for w in weights if w.dim() == 3), 1)
    hidden = []
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        shape = x.shape[:-1]
        if w.dim() == 2:  # shared weight: one matmul over every (image, point)
            a = x.reshape(-1, x.shape[-1])  # (rows, I)
        else:  # per-image weight: (B, Q, I) @ (B, I, O)
            a = x.expand(w.shape[0], *x.shape[-2:]) if x.dim() == 2 else x
            shape = a.shape[:-1]
        if torch.compiler.is_compiling():  # `train.compile`: inductor fuses bias and ReLU into one pass itself
            y = a @ w + b
            y = y.relu() if layer < last else y
        else:
            # Bias and ReLU in place on the product (never on a view of it): at 182 px the activations are
            # 4 x 33,124 x 256 per layer, and a fresh buffer for each (addmm's broadcast bias, an out-of-place
            # ReLU) cost a fifth of a training step. Autograd allows it: the product's backward needs its inputs
            # only, ReLU's backward needs only its output.
            y = _MatMul.apply(a, w).add_(b)
            y = y.relu_() if layer < last else y
        x = y.view(*shape, w.shape[-1])
        if hidden_layers is not None and layer in hidden_layers:
            hidden.append(x if x.dim() == 3 else x.expand(batch, *x.shape))
            if len(hidden) == len(hidden_layers):
                return hidden
    out = x + 0.5
    return out if out.dim() == 3 else out.expand(batch, *out.shape)
