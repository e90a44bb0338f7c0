"""MINR hypernetworks, the part TransINR and GINR share: a transformer reads a zero-filled masked image, its
weight tokens predict a Fourier-feature INR, which is rendered at any coordinates
(docs/METHOD.md#shared-architecture).

How the weight tokens become INR weights, and how the INR starts, is each family's own (`minr.models.transinr`,
`minr.models.ginr`): a subclass builds its heads (`_build_weight_prediction`), initialises the INR (`_init_inr`)
and predicts the weights (`predict_weights`).

Fidelity to the official code (yinboc/trans-inr, kakaobrain/ginr-ipc), given the same weights: pre-norm blocks
with `nn.LayerNorm` (eps 1e-5), learned tokens and positions initialised N(0, 1), residual dropout only (after the
attention projection and after the MLP, none after the GELU), frequencies `exp(linspace(0, ln sigma, n))`.

Keys: B batch, C channels, H/W image size, N data tokens, T weight tokens, D width, Q query coordinates,
I/O an INR layer's input/output width, G weight tokens of one layer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Mlp, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from minr import inr
from minr.errors import MinrError
from minr.masking import to_pixels, zero_fill
from minr.models.args import ModelArgs, channels, fraction, heads_divide, mlp_width, one_of, positive, positive_number
from minr.models.base import Encoder, FeatureKind, PretrainOutput

FREQUENCY_STORAGE = ("buffer", "frozen", "trainable")


FIT_LR = 1e-2  # test-time fitting's Adam step: 30 steps took 28-px scene windows from 8.9 to 16.8 dB (GINR tiny)
FIT_FRACTION = 0.25  # of the pixels in each fitting step


@dataclass(frozen=True, kw_only=True)
class HyperINRArgs(ModelArgs):
    """The transformer and the INR that both MINR hypernetworks have (`--set model_args.NAME=VALUE`)."""

    image_size: int
    in_chans: int
    patch_size: int  # the tokenizer's patch, with `patch_padding` zeros around the image
    patch_padding: int = 0
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop: float = 0.0  # residual dropout
    drop_path_rate: float = 0.0
    inr_hidden: int
    inr_layers: int = 5  # linear layers: Fourier features -> hidden x (inr_layers - 1) -> in_chans
    fourier_freqs: int
    fourier_sigma: float  # the highest frequency
    frequencies: str = "buffer"  # how the frequency table is stored: FREQUENCY_STORAGE
    # A fast option (off by default, docs/METHOD.md#options-minr-adds): fully masked data tokens hold nothing but
    # their position; leave them out of the transformer, as MAE does. Weight tokens are unchanged.
    drop_masked_tokens: bool = False

    def check(self) -> None:
        positive(
            image_size=self.image_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            inr_hidden=self.inr_hidden,
            fourier_freqs=self.fourier_freqs,
        )
        channels(self.in_chans)
        heads_divide("embed_dim", self.embed_dim, "num_heads", self.num_heads)
        mlp_width(self.embed_dim, self.mlp_ratio)
        fraction(drop=self.drop, drop_path_rate=self.drop_path_rate)
        positive_number(fourier_sigma=self.fourier_sigma)
        one_of("frequencies", self.frequencies, FREQUENCY_STORAGE)
        if self.inr_layers < 2:
            raise MinrError(f"model_args.inr_layers must be >= 2 (an input and an output layer), got {self.inr_layers}")
        if self.patch_size > self.image_size:
            raise MinrError(f"model_args.patch_size={self.patch_size} is larger than the {self.image_size}-px image")
        if not 0 <= self.patch_padding <= self.patch_size // 2:  # more would make tokens of padding alone
            raise MinrError(
                f"model_args.patch_padding must be in 0..{self.patch_size // 2} (at most half of "
                f"patch_size={self.patch_size}), got {self.patch_padding}"
            )


def residual_dropout_mlp(*, drop: float = 0.0, **kwargs) -> Mlp:
    """timm's Mlp with dropout after its output projection only: the official blocks have no dropout after the
    GELU (timm's `drop1`), which GINR's 0.1 would otherwise add (and which costs a third of a CPU step)."""
    return Mlp(drop=(0.0, drop), **kwargs)


def weight_head(width: int, out: int) -> nn.Sequential:
    """What reads weight tokens: LayerNorm, then Linear(D -> out). (B, G, D) -> (B, G, out)."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out))


class HyperINR(Encoder):
    """The shared hypernetwork (see the module docstring). Subclasses set `heads` (one per instance-specific
    layer, reading `token_counts` weight tokens each) in `_build_weight_prediction`, and define `_init_inr` and
    `predict_weights`."""

    family = "minr"
    Args = HyperINRArgs
    renders_coordinates = True
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
    decoder_prefixes = ("heads.", "base_weights.", "biases.", "freqs")  # the INR and what predicts it
    heads: nn.ModuleList

    def __init__(self, args: HyperINRArgs) -> None:
        super().__init__()
        if not isinstance(args, self.Args):
            raise TypeError(f"{type(self).__name__} takes {self.Args.__name__}, got {type(args).__name__}")
        self.args = args
        self.image_size, self.in_chans, self.embed_dim = args.image_size, args.in_chans, args.embed_dim
        self.drop_masked_tokens = args.drop_masked_tokens
        self._build_transformer(args)
        self._build_inr(args)
        self.token_counts = self._build_weight_prediction(args)  # weight tokens read by each head
        self.num_weight_tokens = sum(self.token_counts)
        self.weight_tokens = nn.Parameter(torch.zeros(1, self.num_weight_tokens, args.embed_dim))
        self._init_weights()

    def _build_transformer(self, a: HyperINRArgs) -> None:
        # A conv with kernel = stride = patch is the paper's unfold + Linear(p*p*C -> D), same parameters.
        self.tokenizer = nn.Conv2d(a.in_chans, a.embed_dim, a.patch_size, stride=a.patch_size, padding=a.patch_padding)
        side = (a.image_size + 2 * a.patch_padding - a.patch_size) // a.patch_size + 1
        self.num_data_tokens = side * side
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_data_tokens, a.embed_dim))
        dpr = [a.drop_path_rate * i / max(1, a.depth - 1) for i in range(a.depth)]
        self.blocks = nn.ModuleList(
            Block(
                a.embed_dim,
                a.num_heads,
                a.mlp_ratio,
                qkv_bias=a.qkv_bias,
                proj_drop=a.drop,
                drop_path=dpr[i],
                norm_layer=nn.LayerNorm,
                mlp_layer=residual_dropout_mlp,
            )
            for i in range(a.depth)
        )

    def _build_inr(self, a: HyperINRArgs) -> None:
        """The INR's shared parts: frequencies, one base weight (I, O) and bias (O,) per layer."""
        dims = [4 * a.fourier_freqs] + [a.inr_hidden] * (a.inr_layers - 1) + [a.in_chans]
        self.layer_shapes = list(zip(dims[:-1], dims[1:], strict=True))
        freqs = inr.fourier_frequencies(a.fourier_freqs, a.fourier_sigma)
        if a.frequencies == "buffer":  # TransINR keeps them as a buffer; GINR's code holds a frozen parameter
            self.register_buffer("freqs", freqs, persistent=True)
        else:
            self.freqs = nn.Parameter(freqs, requires_grad=a.frequencies == "trainable")
        self.base_weights = nn.ParameterList(nn.Parameter(torch.empty(i, o)) for i, o in self.layer_shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(o)) for _, o in self.layer_shapes)

    def _build_weight_prediction(self, a: HyperINRArgs) -> list[int]:
        """Set `heads` (and any other factor of the predicted weights); return the weight tokens of each head."""
        raise NotImplementedError

    def _init_weights(self) -> None:
        # N(0, 1) tokens and positions, as both official codes (torch.randn; normal_(0, 1))
        nn.init.normal_(self.pos_embed, std=1.0)
        nn.init.normal_(self.weight_tokens, std=1.0)
        self._init_inr()

    def _init_inr(self) -> None:
        """The INR's base weights, biases and other factors, as the family's official code starts them."""
        raise NotImplementedError

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

    def _head_info(self) -> dict[str, object]:
        # the tokenizer takes any size (positions are resampled); per-pixel maps come from the INR's hidden layers.
        # GINR's layers before the modulated one are shared by every image: functions of the coordinates alone.
        hidden = len(self.layer_shapes) - 1
        specific = tuple(range(self._first_image_layer(), hidden))
        return {
            "size_divisor": 1,
            "dense_width": self.layer_shapes[0][1],
            "dense_levels": hidden,
            "dense_specific": specific,
            "dense_default": (hidden - 1,),
        }

    def _first_image_layer(self) -> int:
        """The first INR layer whose weights depend on the image (0-based): every layer is predicted here."""
        return 0

    def dense_features(self, x: torch.Tensor, levels: tuple[int, ...], fit_steps: int = 0) -> list[torch.Tensor]:
        return self.pixel_features(x, tuple(levels), fit_steps=fit_steps)

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
        raise NotImplementedError

    def render(self, coords: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """(Q, 2) coordinates shared by the batch, or (B, Q, 2) per image, + predicted weights -> (B, Q, C)."""
        feats = inr.fourier_features(coords, self.freqs.float())  # (Q, F)
        return inr.render_mlp(feats, weights, list(self.biases))

    def pixel_features(
        self, x: torch.Tensor, layers: tuple[int, ...] = (3,), *, fit_steps: int = 0
    ) -> list[torch.Tensor]:
        """Dense per-pixel features: the INR predicted from the (unmasked) image x, optionally fitted to x for
        `fit_steps` steps (`fit_weights`), rendered at every pixel centre, returning the hidden activations after
        `layers`. (B, C, H, W) -> [(B, hidden, H, W)]."""
        H, W = x.shape[-2:]
        weights = self.predict_weights(self.encode(x))
        feats = inr.fourier_features(inr.coord_grid(H, W, device=x.device), self.freqs.float())
        if fit_steps:
            weights = self.fit_weights(feats, weights, x, fit_steps)
        hidden = inr.render_mlp(feats, weights, list(self.biases), hidden_layers=layers)  # [(B, Q, hidden)]
        return [h.transpose(1, 2).reshape(len(x), -1, H, W) for h in hidden]

    def fit_weights(
        self, feats: torch.Tensor, weights: list[torch.Tensor], x: torch.Tensor, steps: int, lr: float = FIT_LR
    ) -> list[torch.Tensor]:
        """Test-time fitting: `steps` Adam steps on each image's own INR weights (the per-image ones; shared layers
        stay shared), from the hypernetwork's prediction, on the pixel MSE of rendering x. A briefly pretrained
        hypernetwork predicts a near-average function whose activations say little about the pixel; a few steps
        from its prediction make the INR represent this image. Each step sees a fixed-seed random `FIT_FRACTION`
        of the pixels (the same for every image, so each image's fit is independent of its batch). The fitted
        change enters as a constant (first order), so gradients still reach the hypernetwork when it is fine-tuned.
        feats: (Q, F) for x's pixels."""
        target = x.flatten(2).transpose(1, 2).float()  # (B, Q, C), the order of `feats`
        fitted = [w.detach().clone().requires_grad_() if w.dim() == 3 else w.detach() for w in weights]
        biases = [b.detach() for b in self.biases]
        q = len(feats)
        pick = max(1, round(FIT_FRACTION * q))
        g = torch.Generator().manual_seed(0)
        with torch.enable_grad():
            opt = torch.optim.Adam([w for w in fitted if w.requires_grad], lr=lr)
            for _ in range(steps):
                at = torch.randperm(q, generator=g)[:pick].to(feats.device)
                # summed, not averaged over the batch: each image's weights see the gradient of its own error alone
                loss = F.mse_loss(inr.render_mlp(feats[at], fitted, biases), target[:, at], reduction="sum")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return [w if w.dim() == 2 else w + (f - w).detach() for w, f in zip(weights, fitted, strict=True)]

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
