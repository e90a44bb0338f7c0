"""MAE (He et al., facebookresearch/mae) built from timm blocks: the encoder sees visible patches only.

Keys: B batch, C channels, L patches, K kept (visible) patches, D encoder width, E decoder width, P p*p*C.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from minr.errors import MinrError
from minr.masking import to_pixels
from minr.models.args import ModelArgs, channels, fraction, heads_divide, mlp_width, one_of, positive
from minr.models.base import Encoder, FeatureKind, PretrainOutput


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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INPUT_NORMS = ("none", "imagenet")
_NORM = partial(nn.LayerNorm, eps=1e-6)  # MAE's


def mae_sincos(gh: int, gw: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table, in MAE's own channel order [sin x | cos x | sin y | cos y] and precision
    (float64, then float32), for a (gh, gw) patch grid in row-major order. Returns (gh * gw, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim / 4,)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (gh * gw, dim / 4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([one_axis(xs), one_axis(ys)], dim=1).float()


def _sincos(grid: int, dim: int) -> torch.Tensor:
    """The table for a square grid with a zero row for the cls token. Returns (1, 1 + grid^2, dim)."""
    return torch.cat([torch.zeros(1, dim), mae_sincos(grid, grid, dim)], dim=0)[None]


@dataclass(frozen=True, kw_only=True)
class MAEArgs(ModelArgs):
    """MAE's encoder and decoder (`--set model_args.NAME=VALUE`)."""

    image_size: int
    in_chans: int
    patch_size: int  # must divide image_size: MAE masks whole patches
    embed_dim: int
    depth: int
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    drop_path_rate: float = 0.0
    input_norm: str = "none"  # INPUT_NORMS

    def check(self) -> None:
        sizes = ("image_size", "patch_size", "embed_dim", "depth", "num_heads")
        positive(**{k: getattr(self, k) for k in (*sizes, "decoder_dim", "decoder_depth", "decoder_heads")})
        channels(self.in_chans)
        if self.image_size % self.patch_size:
            raise MinrError(
                f"model_args.patch_size={self.patch_size} must divide image_size={self.image_size} "
                "(MAE masks whole patches)"
            )
        heads_divide("embed_dim", self.embed_dim, "num_heads", self.num_heads)
        heads_divide("decoder_dim", self.decoder_dim, "decoder_heads", self.decoder_heads)
        for name in ("embed_dim", "decoder_dim"):
            if getattr(self, name) % 4:  # the 2-D sin-cos table has sin and cos of both axes
                raise MinrError(
                    f"model_args.{name} must be a multiple of 4 (MAE's 2-D sin-cos positions), "
                    f"got {getattr(self, name)}"
                )
        mlp_width(min(self.embed_dim, self.decoder_dim), self.mlp_ratio)
        fraction(drop_path_rate=self.drop_path_rate)
        one_of("input_norm", self.input_norm, INPUT_NORMS)


class MAE(Encoder):
    family = "mae"
    FEATURE_KINDS = (
        FeatureKind("cls", "the cls token (any block; the last block's after the final norm)"),
        FeatureKind("patch_mean", "mean of the patch tokens (any block)"),
        FeatureKind("concat", "cls and patch_mean side by side", token_pool=False),
    )
    FINETUNE_KIND = "patch_mean"
    STEM = r"^cls_token$|^pos_embed$|^patch_embed\."
    decoder_prefixes = ("decoder_", "mask_token")
    Args = MAEArgs

    @classmethod
    def mask_patch_for(cls, args: MAEArgs) -> int:
        return args.patch_size

    def __init__(self, args: MAEArgs) -> None:
        super().__init__()
        if not isinstance(args, MAEArgs):
            raise TypeError(f"MAE takes MAEArgs, got {type(args).__name__}")
        self.args = args
        self.image_size, self.in_chans, self.patch_size = args.image_size, args.in_chans, args.patch_size
        self.embed_dim, self.norm_pix_loss = args.embed_dim, args.norm_pix_loss
        # Official MAE checkpoints expect ImageNet-normalised inputs (and reconstruct in that space); minr trains
        # on [0, 1] images ("none"). Gray models use the mean of the three channels' statistics.
        self.input_norm = args.input_norm
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if args.in_chans != 3:
            mean, std = mean.mean().repeat(args.in_chans), std.mean().repeat(args.in_chans)
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)
        self._build_encoder(args)
        self._build_decoder(args)
        self._init_weights()

    def _build_encoder(self, a: MAEArgs) -> None:
        self.patch_embed = PatchEmbed(a.image_size, a.patch_size, a.in_chans, a.embed_dim, strict_img_size=False)
        grid = a.image_size // a.patch_size
        self.num_patches = grid * grid  # L
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.embed_dim))
        self.pos_embed = nn.Parameter(_sincos(grid, a.embed_dim), requires_grad=False)
        dpr = [a.drop_path_rate * i / max(1, a.depth - 1) for i in range(a.depth)]
        self.blocks = nn.ModuleList(
            Block(a.embed_dim, a.num_heads, a.mlp_ratio, qkv_bias=True, norm_layer=_NORM, drop_path=dpr[i])
            for i in range(a.depth)
        )
        self.norm = _NORM(a.embed_dim)

    def _build_decoder(self, a: MAEArgs) -> None:
        self.decoder_embed = nn.Linear(a.embed_dim, a.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, a.decoder_dim))
        self.decoder_pos_embed = nn.Parameter(_sincos(a.image_size // a.patch_size, a.decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(a.decoder_dim, a.decoder_heads, a.mlp_ratio, qkv_bias=True, norm_layer=_NORM)
            for _ in range(a.decoder_depth)
        )
        self.decoder_norm = _NORM(a.decoder_dim)
        self.decoder_pred = nn.Linear(a.decoder_dim, a.patch_size * a.patch_size * a.in_chans)

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

    def _patch_pos(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed sin-cos positions of the patch grid; rebuilt exactly for another input size."""
        gh, gw = self.token_grid(*x.shape[-2:])
        if gh * gw == self.num_patches:
            return self.pos_embed[:, 1:]
        return mae_sincos(gh, gw, self.embed_dim).to(x.device, x.dtype)[None]

    # -- the encoder interface ----------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor, kind: str, *, last_block: bool) -> torch.Tensor:
        """(B, 1 + L, D) -> (B, F)."""
        if kind == "cls":
            return tokens[:, :1].mean(1)
        if kind == "patch_mean":
            return tokens[:, 1:].mean(1)
        if kind == "concat":
            return torch.cat([tokens[:, :1].mean(1), tokens[:, 1:].mean(1)], dim=1)
        raise MinrError(f"feature kind {kind!r} does not exist for mae encoders")

    def _spatial_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:]

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def _head_info(self) -> dict[str, int]:
        return {"size_divisor": self.patch_size}  # whole patches only

    # -- encoder ----------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor, mask: torch.Tensor | None):
        """Patch tokens of the visible patches, cls first. Returns (tokens (B, 1+K, D), ids_restore (B, L) or
        None, attention mask (B, 1, 1, 1+K) or None when every image keeps the same number of patches)."""
        tokens = self.patch_embed(self._normalize(x)) + self._patch_pos(x)  # (B, L, D)
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
            raise MinrError(f"MAE masks whole patches: mask patch {mask_patch} != model patch {self.patch_size}")
        h, _, attn = self._embed(x, mask)
        if attn is not None:
            raise MinrError(
                "MAE features under masking need the same visible count per image: use mask kind random or block"
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

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_norm == "none" else (x - self.input_mean) / self.input_std

    def _target_stats(self, images: torch.Tensor):
        target = patchify(self._normalize(images), self.patch_size)
        if not self.norm_pix_loss:
            return target, None, None
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        return (target - mean) / (var + 1e-6) ** 0.5, mean, var

    def forward(self, images: torch.Tensor, mask: torch.Tensor, mask_patch: int) -> PretrainOutput:
        """MSE on the masked patches only (MAE); the reconstruction comes back in image space ([0, 1])."""
        if mask_patch != self.patch_size:
            raise MinrError(f"MAE masks whole patches: mask.patch {mask_patch} != model patch {self.patch_size}")
        pred = self.decode(*self.encode(images, mask)).float()  # (B, L, P)
        target, mean, var = self._target_stats(images.float())
        per_patch = ((pred - target) ** 2).mean(-1)  # (B, L)
        m = mask.flatten(1).float()
        loss = (per_patch * m).sum() / m.sum().clamp_min(1)
        if mean is not None:  # back to pixels with the true patch statistics, as MAE's own visualisation does
            pred = pred * (var + 1e-6) ** 0.5 + mean
        recon = unpatchify(pred, self.patch_size, self.in_chans)
        if self.input_norm != "none":
            recon = recon * self.input_std + self.input_mean
        return PretrainOutput(loss=loss, recon=recon, pixel_mask=to_pixels(mask, mask_patch, self.image_size))

    def reconstruct(
        self, images: torch.Tensor, mask: torch.Tensor | None, mask_patch: int, size: int | None = None
    ) -> torch.Tensor:
        if size not in (None, self.image_size):
            raise MinrError(
                f"MAE predicts patches on its {self.image_size}-px grid and cannot render at {size} px; only MINR "
                "models render at any resolution (use --scale 1)"
            )
        if mask is None:
            mask = torch.zeros(
                len(images), *(self.image_size // self.patch_size,) * 2, dtype=torch.bool, device=images.device
            )
        return self.forward(images, mask, mask_patch).recon
