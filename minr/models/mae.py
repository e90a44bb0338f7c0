"""MAE (He et al., facebookresearch/mae) built from timm blocks: the encoder sees visible patches only.

Keys: B batch, C channels, L patches, K kept (visible) patches, D encoder width, E decoder width, P p*p*C.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from minr.masking import to_pixels
from minr.models.base import EncoderMixin, PretrainOutput


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), MAE's (p, q, c) order within a patch."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W) for a square grid."""
    B, L, _ = patches.shape
    g = int(round(L**0.5))
    x = patches.reshape(B, g, g, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, g * patch, g * patch)


def _sincos(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding with a zero row for the cls token. Returns (1, 1 + grid^2, dim)."""
    pe = build_sincos2d_pos_embed([grid, grid], dim=dim)
    return torch.cat([torch.zeros(1, dim), pe], dim=0)[None]


class MAE(EncoderMixin, nn.Module):
    family = "mae"
    decoder_prefixes = ("decoder_", "mask_token")

    def __init__(
        self,
        *,
        image_size: int,
        in_chans: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        decoder_dim: int,
        decoder_depth: int,
        decoder_heads: int,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"MAE needs a patch size that divides the image: {patch_size} vs {image_size}")
        self.image_size, self.in_chans, self.patch_size, self.embed_dim = image_size, in_chans, patch_size, embed_dim
        self.norm_pix_loss = norm_pix_loss
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        grid, L = image_size // patch_size, (image_size // patch_size) ** 2
        self.num_patches = L
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(_sincos(grid, embed_dim), requires_grad=False)
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm, drop_path=dpr[i])
            for i in range(depth)
        )
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(_sincos(grid, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(decoder_depth)
        )
        self.decoder_norm = norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def data_grid(self, x: torch.Tensor) -> tuple[int, int]:
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _patch_pos(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed sin-cos positions of the patch grid; rebuilt exactly for another input size."""
        gh, gw = self.data_grid(x)
        if gh * gw == self.num_patches:
            return self.pos_embed[:, 1:]
        return build_sincos2d_pos_embed([gh, gw], dim=self.embed_dim).to(x.device, x.dtype)[None]

    def token_groups(self) -> dict[str, slice]:
        return {"cls": slice(0, 1), "patch": slice(1, None)}

    # -- encoder ----------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor, mask: torch.Tensor | None):
        """Patch tokens of the visible patches, cls first. Returns (tokens (B, 1+K, D), ids_restore (B, L) or
        None, attention mask (B, 1, 1, 1+K) or None when every image keeps the same number of patches)."""
        tokens = self.patch_embed(x) + self._patch_pos(x)  # (B, L, D)
        ids_restore = attn = None
        if mask is not None:
            flat = mask.flatten(1)  # (B, L) True = masked
            ids_shuffle = torch.argsort(flat.to(torch.int8), dim=1, stable=True)  # visible first
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            n_keep = (~flat).sum(1)
            K = int(n_keep.max())
            tokens = torch.gather(tokens, 1, ids_shuffle[:, :K, None].expand(-1, -1, tokens.shape[-1]))
            if bool((n_keep != K).any()):  # per-cell masks keep different counts: pad and mask attention
                valid = torch.arange(K, device=x.device)[None] < n_keep[:, None]  # (B, K)
                attn = torch.cat([valid.new_ones(len(valid), 1), valid], 1)[:, None, None, :]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1), ids_restore, attn

    def _block_outputs(
        self, x: torch.Tensor, mask: torch.Tensor | None, mask_patch: int, keep: set[int]
    ) -> list[torch.Tensor]:
        if mask is not None and mask_patch != self.patch_size:
            raise ValueError(f"MAE masks whole patches: mask patch {mask_patch} != model patch {self.patch_size}")
        h, _, attn = self._embed(x, mask)
        if attn is not None:
            raise ValueError(
                "MAE features under masking need the same visible count per image (mask kind random or block)"
            )
        outs, last = [], len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in keep:
                outs.append(self.norm(h) if i == last else h)
        return outs

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None):
        h, ids_restore, attn = self._embed(x, mask)
        for block in self.blocks:
            h = block(h, attn_mask=attn)
        return self.norm(h), ids_restore, attn

    # -- decoder and loss -------------------------------------------------------------------------------
    def decode(self, h: torch.Tensor, ids_restore: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
        """(B, 1+K, D) encoded visible tokens -> (B, L, P) predicted patches, mask tokens unshuffled back."""
        h = self.decoder_embed(h)
        B, K, L = h.shape[0], h.shape[1] - 1, ids_restore.shape[1]
        vis = h[:, 1:]
        if attn is not None:  # padding slots stand for masked patches: they get the mask token too
            vis = torch.where(attn[:, 0, 0, 1:, None], vis, self.mask_token.to(vis.dtype))
        seq = torch.cat([vis, self.mask_token.expand(B, L - K, -1).to(vis.dtype)], dim=1)
        seq = torch.gather(seq, 1, ids_restore[:, :, None].expand(-1, -1, seq.shape[-1]))
        seq = torch.cat([h[:, :1], seq], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            seq = block(seq)
        return self.decoder_pred(self.decoder_norm(seq))[:, 1:]

    def _target_stats(self, images: torch.Tensor):
        target = patchify(images, self.patch_size)
        if not self.norm_pix_loss:
            return target, None, None
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        return (target - mean) / (var + 1e-6) ** 0.5, mean, var

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor, mask_patch: int, pixel_index: torch.Tensor | None = None
    ) -> PretrainOutput:
        """MSE on the masked patches only (MAE). `pixel_index` is a MINR option and is ignored here."""
        if mask_patch != self.patch_size:
            raise ValueError(f"MAE masks whole patches: mask.patch {mask_patch} != model patch {self.patch_size}")
        pred = self.decode(*self.encode(images, mask)).float()  # (B, L, P)
        target, mean, var = self._target_stats(images.float())
        per_patch = ((pred - target) ** 2).mean(-1)  # (B, L)
        m = mask.flatten(1).float()
        loss = (per_patch * m).sum() / m.sum().clamp_min(1)
        if mean is not None:  # back to pixels with the true patch statistics, as MAE's own visualisation does
            pred = pred * (var + 1e-6) ** 0.5 + mean
        recon = unpatchify(pred, self.patch_size, self.in_chans)
        return PretrainOutput(loss=loss, recon=recon, pixel_mask=to_pixels(mask, mask_patch, self.image_size))

    def reconstruct(
        self, images: torch.Tensor, mask: torch.Tensor | None, mask_patch: int, size: int | None = None
    ) -> torch.Tensor:
        if size not in (None, self.image_size):
            raise ValueError("MAE predicts patches on its own grid and cannot render at another resolution")
        if mask is None:
            mask = torch.zeros(
                len(images), *(self.image_size // self.patch_size,) * 2, dtype=torch.bool, device=images.device
            )
        return self.forward(images, mask, mask_patch).recon
