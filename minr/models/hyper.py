"""MINR hypernetworks: a transformer reads a zero-filled masked image and predicts a Fourier-feature INR.

Two variants (METHOD.md): "transinr" predicts every INR layer (weight tokens per layer, tiled over the output
axis, multiplied into a shared base weight); "ginr" predicts only layer 2 as `U_n @ V`, the rest is shared.

Keys: B batch, C channels, H/W image size, N data tokens, T weight tokens, D width, Q query coordinates,
I/O an INR layer's input/output width, G weight tokens of one layer.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from minr import inr
from minr.masking import to_pixels, zero_fill
from minr.models.base import EncoderMixin, PretrainOutput


class HyperINR(EncoderMixin, nn.Module):
    family = "minr"
    decoder_prefixes = ("heads.", "base_weights.", "biases.", "ginr_v", "freqs")

    def __init__(
        self,
        *,
        variant: str,
        image_size: int,
        in_chans: int,
        patch_size: int,
        patch_padding: int = 0,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        drop_path_rate: float = 0.0,
        inr_hidden: int,
        inr_layers: int = 5,
        fourier_freqs: int,
        fourier_sigma: float,
        fourier_trainable: bool | None = None,
        tokens_per_layer: int = 64,
        ginr_rank: int = 256,
    ) -> None:
        super().__init__()
        if variant not in ("transinr", "ginr"):
            raise ValueError(f"variant must be transinr or ginr, got {variant!r}")
        self.variant, self.image_size, self.in_chans, self.embed_dim = variant, image_size, in_chans, embed_dim
        # A conv with kernel = stride = patch is the paper's unfold + Linear(p*p*C -> D), same parameters.
        self.tokenizer = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, padding=patch_padding)
        side = (image_size + 2 * patch_padding - patch_size) // patch_size + 1
        self.num_data_tokens = side * side
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_data_tokens, embed_dim))
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop, drop_path=dpr[i])
            for i in range(depth)
        )
        # The INR: Fourier features (4 * fourier_freqs) -> hidden x (inr_layers - 1) -> in_chans.
        dims = [4 * fourier_freqs] + [inr_hidden] * (inr_layers - 1) + [in_chans]
        self.layer_shapes = list(zip(dims[:-1], dims[1:], strict=True))
        freqs = inr.fourier_frequencies(fourier_freqs, fourier_sigma)
        if fourier_trainable is None:  # TransINR keeps them as a buffer; GINR's code holds a frozen parameter
            self.register_buffer("freqs", freqs, persistent=True)
        else:
            self.freqs = nn.Parameter(freqs, requires_grad=fourier_trainable)
        self.base_weights = nn.ParameterList(nn.Parameter(torch.empty(i, o)) for i, o in self.layer_shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(o)) for _, o in self.layer_shapes)
        if variant == "transinr":
            self.token_counts = [min(tokens_per_layer, o) for _, o in self.layer_shapes]
            self.heads = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, i)) for i, _ in self.layer_shapes
            )
        else:
            self.token_counts = [ginr_rank]
            self.heads = nn.ModuleList([nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, inr_hidden))])
            self.ginr_v = nn.Parameter(torch.randn(ginr_rank, inr_hidden) / inr_hidden)
            self.base_weights[1].requires_grad_(False)  # replaced by U_n @ V; kept so checkpoints match GINR's
        self.num_weight_tokens = sum(self.token_counts)
        self.weight_tokens = nn.Parameter(torch.zeros(1, self.num_weight_tokens, embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.weight_tokens, std=0.02)
        for w, b in zip(self.base_weights, self.biases, strict=True):  # nn.Linear's default init
            nn.init.kaiming_uniform_(w.T, a=math.sqrt(5))
            bound = 1 / math.sqrt(w.shape[0])
            nn.init.uniform_(b, -bound, bound)

    def token_groups(self) -> dict[str, slice]:
        return {"data": slice(0, -self.num_weight_tokens), "weight": slice(-self.num_weight_tokens, None)}

    # -- encode -------------------------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N + T, D): data tokens with positions, then the learned weight tokens."""
        grid = self.tokenizer(x)  # (B, D, h, w)
        pos = self.pos_embed
        if grid.shape[-2] * grid.shape[-1] != self.num_data_tokens:  # another input size: resample positions
            pos = resample_abs_pos_embed(pos, list(grid.shape[-2:]), num_prefix_tokens=0)
        data = grid.flatten(2).transpose(1, 2) + pos  # (B, N, D)
        return torch.cat([data, self.weight_tokens.expand(x.shape[0], -1, -1)], dim=1)

    def data_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(h, w) of the data-token grid for an input of x's size."""
        p, pad = self.tokenizer.kernel_size[0], self.tokenizer.padding[0]
        return tuple((s + 2 * pad - p) // p + 1 for s in x.shape[-2:])

    def _block_outputs(
        self, x: torch.Tensor, mask: torch.Tensor | None, mask_patch: int, keep: set[int]
    ) -> list[torch.Tensor]:
        if mask is not None:
            x = zero_fill(x, to_pixels(mask, mask_patch, x.shape[-1]))
        h, outs = self._tokens(x), []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in keep:
                outs.append(h)
        return outs

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) already masked -> (B, N + T, D)."""
        h = self._tokens(x)
        for block in self.blocks:
            h = block(h)
        return h

    # -- predict weights and render ---------------------------------------------------------------------
    def modulations(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, N + T, D) -> the predicted modulation of each instance-specific layer, (B, G, I): TransINR's
        per-layer factors before tiling, GINR's U_n. Also a feature for probes."""
        wt = tokens[:, -self.num_weight_tokens :].float()  # (B, T, D)
        starts = [0, *itertools.accumulate(self.token_counts)]
        return [head(wt[:, a:b]) for head, a, b in zip(self.heads, starts[:-1], starts[1:], strict=True)]

    def predict_weights(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, N + T, D) -> one weight per INR layer: per image (B, I, O) or shared (I, O), columns normalised."""
        mods = [m.transpose(1, 2) for m in self.modulations(tokens)]  # (B, I, G)
        if self.variant == "transinr":
            weights = []
            for (_, o), m, base in zip(self.layer_shapes, mods, self.base_weights, strict=True):
                m = m.repeat(1, 1, math.ceil(o / m.shape[-1]))[:, :, :o]  # tile: column j uses token j mod G
                weights.append(inr.normalize_columns(base * m))  # (B, I, O)
            return weights
        weights = [inr.normalize_columns(w) for w in self.base_weights]
        weights[1] = inr.normalize_columns(mods[0] @ self.ginr_v)  # (B, I, O); layer 2's base weight is unused
        return weights

    def render(self, coords: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """(Q, 2) coordinates + predicted weights -> (B, Q, C) colours."""
        feats = inr.fourier_features(coords, self.freqs.float())  # (Q, F)
        return inr.render_mlp(feats, weights, list(self.biases))

    def pixel_features(self, x: torch.Tensor, layers: tuple[int, ...] = (3,)) -> list[torch.Tensor]:
        """Dense per-pixel features: the INR predicted from the (unmasked) image x, rendered at every pixel centre,
        returning the hidden activations after `layers`. (B, C, H, W) -> [(B, hidden, H, W)]."""
        H, W = x.shape[-2:]
        weights = self.predict_weights(self.encode(x))
        feats = inr.fourier_features(inr.coord_grid(H, W, device=x.device), self.freqs.float())
        hidden = inr.render_mlp(feats, weights, list(self.biases), hidden_layers=layers)  # [(B, Q, hidden)]
        return [h.transpose(1, 2).reshape(len(x), -1, H, W) for h in hidden]

    def reconstruct(
        self, images: torch.Tensor, mask: torch.Tensor | None, mask_patch: int, size: int | None = None
    ) -> torch.Tensor:
        """Render the whole image at `size` (default: native) from the masked input. Returns (B, C, S, S)."""
        x = images if mask is None else zero_fill(images, to_pixels(mask, mask_patch, images.shape[-1]))
        weights = self.predict_weights(self.encode(x))
        s = size or images.shape[-1]
        out = self.render(inr.coord_grid(s, s, device=images.device), weights)  # (B, Q, C)
        return out.transpose(1, 2).reshape(images.shape[0], -1, s, s)

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor, mask_patch: int, pixel_index: torch.Tensor | None = None
    ) -> PretrainOutput:
        """MSE between the rendering of the zero-filled masked image and the clean image, over every pixel
        (or over `pixel_index`, a random subset of the H*W pixels: an unbiased estimate of the same loss)."""
        B, C, H, W = images.shape
        pixel_mask = to_pixels(mask, mask_patch, H)
        weights = self.predict_weights(self.encode(zero_fill(images, pixel_mask)))
        coords = inr.coord_grid(H, W, device=images.device)
        target = images.flatten(2).transpose(1, 2)  # (B, Q, C)
        if pixel_index is not None:
            coords, target = coords[pixel_index], target[:, pixel_index]
        pred = self.render(coords, weights)  # (B, Q, C)
        loss = F.mse_loss(pred.float(), target.float())
        recon = None if pixel_index is not None else pred.transpose(1, 2).reshape(B, C, H, W)
        return PretrainOutput(loss=loss, recon=recon, pixel_mask=pixel_mask)
