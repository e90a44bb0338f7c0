"""MINR hypernetworks: a transformer reads a zero-filled masked image and predicts a Fourier-feature INR.

Two variants (docs/METHOD.md): "transinr" predicts every INR layer (weight tokens per layer, tiled over the output
axis, multiplied into a shared base weight); "ginr" predicts one layer (the 2nd by default, `modulated_layer`) as
`U_n @ V`, the rest is shared.

Fidelity to the official code (yinboc/trans-inr, kakaobrain/ginr-ipc), given the same weights: pre-norm blocks
with `nn.LayerNorm` (eps 1e-5), learned tokens and positions initialised N(0, 1), residual dropout only (after the
attention projection and after the MLP, none after the GELU), frequencies `exp(linspace(0, ln sigma, n))`. The INR
is initialised per variant as each official code does (`_init_inr`).

Keys: B batch, C channels, H/W image size, N data tokens, T weight tokens, D width, Q query coordinates,
I/O an INR layer's input/output width, G weight tokens of one layer.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from minr import inr
from minr.errors import MinrError
from minr.masking import to_pixels, zero_fill
from minr.models.base import Encoder, FeatureKind, PretrainOutput

FREQUENCY_STORAGE = ("buffer", "frozen", "trainable")


def residual_dropout_mlp(*, drop: float = 0.0, **kwargs) -> Mlp:
    """timm's Mlp with dropout after its output projection only: the official blocks have no dropout after the
    GELU (timm's `drop1`), which GINR's 0.1 would otherwise add (and which costs a third of a CPU step)."""
    return Mlp(drop=(0.0, drop), **kwargs)


class HyperINR(Encoder):
    family = "minr"
    FEATURE_KINDS = (
        FeatureKind("data_mean", "mean of the data tokens (any block)"),
        FeatureKind("weight_mean", "mean of the weight tokens (any block)"),
        FeatureKind(
            "modulation", "the predicted INR modulation, averaged per layer", any_block=False, token_pool=False
        ),
        FeatureKind(
            "concat", "data_mean, weight_mean (and modulation at the last block) side by side", token_pool=False
        ),
    )
    FINETUNE_KIND = "data_mean"
    STEM = r"^tokenizer\.|^pos_embed$|^weight_tokens$"
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
        frequencies: str = "buffer",
        tokens_per_layer: int = 64,
        ginr_rank: int = 256,
        modulated_layer: int = 2,
        drop_masked_tokens: bool = False,
    ) -> None:
        super().__init__()
        if variant not in ("transinr", "ginr"):
            raise MinrError(f"model_args.variant must be transinr or ginr, got {variant!r}")
        if frequencies not in FREQUENCY_STORAGE:
            raise MinrError(
                f"model_args.frequencies must be one of {', '.join(FREQUENCY_STORAGE)}, got {frequencies!r}"
            )
        sizes = dict(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth)
        _check_sizes(
            **sizes, num_heads=num_heads, inr_hidden=inr_hidden, inr_layers=inr_layers, fourier_freqs=fourier_freqs
        )
        if variant == "ginr" and not 1 <= modulated_layer < inr_layers:
            raise MinrError(
                f"model_args.modulated_layer must name a hidden layer, 1..{inr_layers - 1} (the paper's is 2), "
                f"got {modulated_layer}"
            )
        self.variant, self.image_size, self.in_chans, self.embed_dim = variant, image_size, in_chans, embed_dim
        # A fast option (off by default, docs/METHOD.md): data tokens whose every pixel is masked hold nothing but their
        # position; leave them out of the transformer, as MAE does. Weight tokens are unchanged.
        self.drop_masked_tokens = drop_masked_tokens
        # A conv with kernel = stride = patch is the paper's unfold + Linear(p*p*C -> D), same parameters.
        self.tokenizer = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, padding=patch_padding)
        side = (image_size + 2 * patch_padding - patch_size) // patch_size + 1
        self.num_data_tokens = side * side
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_data_tokens, embed_dim))
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop,
                drop_path=dpr[i],
                norm_layer=nn.LayerNorm,
                mlp_layer=residual_dropout_mlp,
            )
            for i in range(depth)
        )
        # The INR: Fourier features (4 * fourier_freqs) -> hidden x (inr_layers - 1) -> in_chans.
        dims = [4 * fourier_freqs] + [inr_hidden] * (inr_layers - 1) + [in_chans]
        self.layer_shapes = list(zip(dims[:-1], dims[1:], strict=True))
        freqs = inr.fourier_frequencies(fourier_freqs, fourier_sigma)
        if frequencies == "buffer":  # TransINR keeps them as a buffer; GINR's code holds a frozen parameter
            self.register_buffer("freqs", freqs, persistent=True)
        else:
            self.freqs = nn.Parameter(freqs, requires_grad=frequencies == "trainable")
        self.base_weights = nn.ParameterList(nn.Parameter(torch.empty(i, o)) for i, o in self.layer_shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(o)) for _, o in self.layer_shapes)
        if variant == "transinr":
            self.token_counts = [min(tokens_per_layer, o) for _, o in self.layer_shapes]
            self.heads = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, i)) for i, _ in self.layer_shapes
            )
        else:
            self.modulated = modulated_layer - 1  # 0-based index of the instance-specific layer
            fan_in, fan_out = self.layer_shapes[self.modulated]
            self.token_counts = [min(ginr_rank, fan_out)]
            self.heads = nn.ModuleList([nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, fan_in))])
            self.ginr_v = nn.Parameter(torch.empty(self.token_counts[0], fan_out))
            self.base_weights[self.modulated].requires_grad_(False)  # replaced by U_n @ V; kept as GINR's code does
        self.num_weight_tokens = sum(self.token_counts)
        self.weight_tokens = nn.Parameter(torch.zeros(1, self.num_weight_tokens, embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        # N(0, 1) tokens and positions, as both official codes (torch.randn; normal_(0, 1))
        nn.init.normal_(self.pos_embed, std=1.0)
        nn.init.normal_(self.weight_tokens, std=1.0)
        self._init_inr()

    @torch.no_grad()
    def _init_inr(self) -> None:
        """TransINR (`init_wb`): nn.Linear's default, weight U(+-1/sqrt(in)) and bias U(+-1/sqrt(in)).
        GINR (`create_params_with_init`): kaiming_uniform(a=sqrt(5)) on the (in, out) matrix, whose fan torch
        takes from its second dimension, so U(+-1/sqrt(out)): ~10x wider for the 3-wide output layer; zero biases;
        the shared factor V ~ N(0, 1) / sqrt(rank * in)."""
        for w, b in zip(self.base_weights, self.biases, strict=True):
            if self.variant == "transinr":
                nn.init.kaiming_uniform_(w.T, a=math.sqrt(5))
                bound = 1 / math.sqrt(w.shape[0])
                nn.init.uniform_(b, -bound, bound)
            else:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                nn.init.zeros_(b)
        if self.variant == "ginr":
            rank, fan_in = self.ginr_v.shape[0], self.layer_shapes[self.modulated][0]
            self.ginr_v.normal_().div_(math.sqrt(rank * fan_in))

    # -- the encoder interface ----------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor, kind: str, *, last_block: bool) -> torch.Tensor:
        """(B, N + T, D) -> (B, F)."""
        if kind == "data_mean":
            return tokens[:, : -self.num_weight_tokens].mean(1)
        if kind == "weight_mean":
            return tokens[:, -self.num_weight_tokens :].mean(1)
        if kind == "modulation":  # each layer's modulation, averaged over its tokens
            return torch.cat([m.mean(1) for m in self.modulations(tokens)], dim=1)
        if kind == "concat":
            parts = ("data_mean", "weight_mean") + (("modulation",) if last_block else ())
            return torch.cat([self.pool(tokens, p, last_block=last_block) for p in parts], dim=1)
        raise MinrError(f"feature kind {kind!r} does not exist for minr encoders")

    def _spatial_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, : -self.num_weight_tokens]

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        p, pad = self.tokenizer.kernel_size[0], self.tokenizer.padding[0]
        return (height + 2 * pad - p) // p + 1, (width + 2 * pad - p) // p + 1

    def _head_info(self) -> dict[str, int]:
        # the tokenizer takes any size (positions are resampled); per-pixel maps come from the INR's hidden layers
        return {"size_divisor": 1, "dense_width": self.layer_shapes[0][1], "dense_levels": len(self.layer_shapes) - 1}

    def dense_features(self, x: torch.Tensor, levels: tuple[int, ...]) -> list[torch.Tensor]:
        return self.pixel_features(x, tuple(levels))

    # -- encode -------------------------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N + T, D): data tokens with positions, then the learned weight tokens."""
        grid = self.tokenizer(x)  # (B, D, h, w)
        pos = self.pos_embed
        if grid.shape[-2] * grid.shape[-1] != self.num_data_tokens:  # another input size: resample positions
            pos = resample_abs_pos_embed(pos, list(grid.shape[-2:]), num_prefix_tokens=0)
        data = grid.flatten(2).transpose(1, 2) + pos  # (B, N, D)
        return torch.cat([data, self.weight_tokens.expand(x.shape[0], -1, -1)], dim=1)

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

    def encode(self, x: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) already masked -> (B, N + T, D). With `drop_masked_tokens` and the (B, 1, H, W) pixel mask,
        fully masked data tokens are left out: (B, K + T, D), K the most visible tokens of an image (shorter images
        padded, padding kept out of attention)."""
        h, attn = self._tokens(x), None
        if self.drop_masked_tokens and pixel_mask is not None:
            h, attn = self._visible_only(h, pixel_mask)
        for block in self.blocks:
            h = block(h, attn_mask=attn)
        return h

    def _visible_only(self, h: torch.Tensor, pixel_mask: torch.Tensor):
        """Keep the data tokens whose receptive field has a visible pixel. (B, N + T, D) -> (B, K + T, D) and a
        (B, 1, 1, K + T) attention mask, or None when every image keeps the same number."""
        p, pad = self.tokenizer.kernel_size[0], self.tokenizer.padding[0]
        seen = F.max_pool2d((~pixel_mask).float(), p, stride=p, padding=pad).flatten(1) > 0  # (B, N); pads unseen
        data, weight = h[:, : -self.num_weight_tokens], h[:, -self.num_weight_tokens :]
        order = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)  # visible tokens first, in grid order
        counts = seen.sum(1)
        K = int(counts.max())
        data = torch.gather(data, 1, order[:, :K, None].expand(-1, -1, data.shape[-1]))
        attn = None
        if bool((counts != K).any()):
            valid = torch.arange(K, device=h.device)[None] < counts[:, None]  # (B, K)
            attn = torch.cat([valid, valid.new_ones(len(valid), self.num_weight_tokens)], 1)[:, None, None, :]
        return torch.cat([data, weight], dim=1), attn

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
        weights[self.modulated] = inr.normalize_columns(mods[0] @ self.ginr_v)  # (B, I, O); its base weight is unused
        return weights

    def render(self, coords: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """(Q, 2) coordinates shared by the batch, or (B, Q, 2) per image, + predicted weights -> (B, Q, C)."""
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
        """Render the whole image at `size` (default: native) from the masked input, in chunks of coordinates so
        that memory stays flat at any size. Returns (B, C, S, S)."""
        pixel_mask = None if mask is None else to_pixels(mask, mask_patch, images.shape[-1])
        x = images if mask is None else zero_fill(images, pixel_mask)
        weights = self.predict_weights(self.encode(x, pixel_mask))
        s = size or images.shape[-1]
        coords = inr.coord_grid(s, s, device=images.device)  # (Q, 2)
        chunk = max(4096, 2**23 // (len(images) * max(o for _, o in self.layer_shapes)))  # 32 MiB per activation
        out = torch.cat([self.render(coords[i : i + chunk], weights) for i in range(0, len(coords), chunk)], dim=1)
        return out.transpose(1, 2).reshape(images.shape[0], -1, s, s)

    def forward(
        self,
        images: torch.Tensor,
        mask: torch.Tensor,
        mask_patch: int,
        pixel_index: torch.Tensor | None = None,
        coord_noise: torch.Tensor | None = None,
    ) -> PretrainOutput:
        """MSE between the rendering of the zero-filled masked image and the clean image, over every pixel
        (or over `pixel_index`, a random subset of the H*W pixels: an unbiased estimate of the same loss).
        `coord_noise` (B, H*W, 2) jitters each image's coordinates (GINR's "coordwise" training noise)."""
        B, C, H, W = images.shape
        pixel_mask = to_pixels(mask, mask_patch, H)
        weights = self.predict_weights(self.encode(zero_fill(images, pixel_mask), pixel_mask))
        coords = inr.coord_grid(H, W, device=images.device)  # (Q, 2)
        if coord_noise is not None:
            coords = coords + coord_noise  # (B, Q, 2)
        target = images.flatten(2).transpose(1, 2)  # (B, Q, C)
        if pixel_index is not None:
            coords, target = coords[..., pixel_index, :], target[:, pixel_index]
        pred = self.render(coords, weights)  # (B, Q, C)
        loss = F.mse_loss(pred.float(), target.float())
        recon = None if pixel_index is not None else pred.transpose(1, 2).reshape(B, C, H, W)
        return PretrainOutput(loss=loss, recon=recon, pixel_mask=pixel_mask)


def _check_sizes(**sizes: int) -> None:
    """Architecture arguments a user can set with --set model_args.X, checked with a message that names them."""
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise MinrError(f"model_args.{name} must be a positive integer, got {value!r}")
    if sizes["embed_dim"] % sizes["num_heads"]:
        raise MinrError(
            f"model_args.embed_dim={sizes['embed_dim']} must be a multiple of num_heads={sizes['num_heads']}"
        )
    if sizes["inr_layers"] < 2:
        raise MinrError(f"model_args.inr_layers must be >= 2, got {sizes['inr_layers']}")
    if sizes["patch_size"] > sizes["image_size"]:
        raise MinrError(
            f"model_args.patch_size={sizes['patch_size']} is larger than the {sizes['image_size']}-px image"
        )
