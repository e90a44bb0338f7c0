"""Typed model arguments: each family declares its constructor arguments once (`minr.models.*Args`), and every
unknown name, wrong type or value out of range in `model_args`, and every mask that does not mean what it says,
is refused by `minrctl pretrain --dry-run` in one line naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from click.testing import CliRunner

from cli.main import main
from minr.build import check_config, default_config
from minr.errors import MinrError
from minr.models import GINR, MAE, TransINR, create_model, get_spec, list_models

GINR_TINY, TRANSINR_TINY, MAE_TINY = "ginr_tiny", "transinr_tiny", "mae_tiny"

# (model, --set values, a fragment of the one-line message)
ROWS = [
    # sizes: zero, negative, inconsistent
    (GINR_TINY, ["model_args.depth=0"], "model_args.depth must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.depth=-2"], "model_args.depth must be a positive integer, got -2"),
    (GINR_TINY, ["model_args.embed_dim=0"], "model_args.embed_dim must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.embed_dim=130"], "model_args.embed_dim=130 must be a multiple of num_heads=4"),
    (GINR_TINY, ["model_args.num_heads=0"], "model_args.num_heads must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.num_heads=-4"], "model_args.num_heads must be a positive integer, got -4"),
    (GINR_TINY, ["model_args.image_size=0"], "model_args.image_size must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.in_chans=0"], "model_args.in_chans must be 1 (grayscale) or 3 (RGB), got 0"),
    (MAE_TINY, ["model_args.in_chans=2"], "model_args.in_chans must be 1 (grayscale) or 3 (RGB), got 2"),
    (GINR_TINY, ["model_args.patch_size=0"], "model_args.patch_size must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.patch_size=29"], "model_args.patch_size=29 is larger than the 28-px image"),
    (GINR_TINY, ["model_args.patch_padding=-1"], "model_args.patch_padding must be in 0..2 (at most half of"),
    (TRANSINR_TINY, ["model_args.patch_padding=3"], "model_args.patch_padding must be in 0..2"),
    (GINR_TINY, ["model_args.inr_hidden=0"], "model_args.inr_hidden must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.inr_layers=1"], "model_args.inr_layers must be >= 2"),
    (GINR_TINY, ["model_args.fourier_freqs=0"], "model_args.fourier_freqs must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.fourier_sigma=-1"], "model_args.fourier_sigma must be a positive finite number"),
    (GINR_TINY, ["model_args.fourier_sigma=0"], "model_args.fourier_sigma must be a positive finite number"),
    (TRANSINR_TINY, ["model_args.fourier_sigma=.inf"], "model_args.fourier_sigma must be a positive finite number"),
    (GINR_TINY, ["model_args.mlp_ratio=0"], "model_args.mlp_ratio must be a positive finite number, got 0.0"),
    (GINR_TINY, ["model_args.mlp_ratio=0.001"], "model_args.mlp_ratio=0.001 gives MLPs of 0 hidden units"),
    (GINR_TINY, ["model_args.frequencies=learned"], "model_args.frequencies must be one of buffer, frozen, trainable"),
    # rates
    (GINR_TINY, ["model_args.drop=1"], "model_args.drop must be in [0, 1), got 1.0"),
    (GINR_TINY, ["model_args.drop=-0.1"], "model_args.drop must be in [0, 1), got -0.1"),
    (TRANSINR_TINY, ["model_args.drop_path_rate=1.5"], "model_args.drop_path_rate must be in [0, 1), got 1.5"),
    (MAE_TINY, ["model_args.drop_path_rate=-1"], "model_args.drop_path_rate must be in [0, 1), got -1.0"),
    # each family's own arguments
    (GINR_TINY, ["model_args.ginr_rank=0"], "model_args.ginr_rank must be a positive integer, got 0"),
    (GINR_TINY, ["model_args.ginr_rank=-8"], "model_args.ginr_rank must be a positive integer, got -8"),
    (GINR_TINY, ["model_args.modulated_layer=0"], "model_args.modulated_layer must name a hidden layer, 1..4"),
    (GINR_TINY, ["model_args.modulated_layer=5"], "model_args.modulated_layer must name a hidden layer, 1..4"),
    (GINR_TINY, ["model_args.inr_layers=3", "model_args.modulated_layer=3"], "a hidden layer, 1..2"),
    (TRANSINR_TINY, ["model_args.tokens_per_layer=0"], "model_args.tokens_per_layer must be a positive integer"),
    (MAE_TINY, ["model_args.patch_size=5"], "model_args.patch_size=5 must divide image_size=28"),
    (MAE_TINY, ["model_args.decoder_depth=0"], "model_args.decoder_depth must be a positive integer, got 0"),
    (MAE_TINY, ["model_args.decoder_dim=-64"], "model_args.decoder_dim must be a positive integer, got -64"),
    (MAE_TINY, ["model_args.decoder_heads=3"], "model_args.decoder_dim=64 must be a multiple of decoder_heads=3"),
    (MAE_TINY, ["model_args.embed_dim=6", "model_args.num_heads=2"], "model_args.embed_dim must be a multiple of 4"),
    (MAE_TINY, ["model_args.input_norm=zscore"], "model_args.input_norm must be one of none, imagenet"),
    # wrong types
    (GINR_TINY, ["model_args.depth=two"], "model_args.depth"),
    (GINR_TINY, ["model_args.depth=2.5"], "model_args.depth"),
    (GINR_TINY, ["model_args.qkv_bias=3"], "model_args.qkv_bias"),
    (MAE_TINY, ["model_args.norm_pix_loss=maybe"], "model_args.norm_pix_loss"),
    (GINR_TINY, ["model_args.drop=a lot"], "model_args.drop"),
    (GINR_TINY, ["model_args=5"], "model_args"),
    # names another family has, or nobody has
    (GINR_TINY, ["model_args.tokens_per_layer=8"], "'ginr_tiny' does not accept these model_args: tokens_per_layer"),
    (TRANSINR_TINY, ["model_args.ginr_rank=8"], "'transinr_tiny' does not accept these model_args: ginr_rank"),
    (TRANSINR_TINY, ["model_args.modulated_layer=2"], "does not accept these model_args: modulated_layer"),
    (MAE_TINY, ["model_args.fourier_sigma=8"], "'mae_tiny' does not accept these model_args: fourier_sigma"),
    (TRANSINR_TINY, ["model_args.variant=ginr"], "does not accept these model_args: variant"),
    # another preset under this one's recipe
    (GINR_TINY, ["model=mae_tiny"], "--set model=mae_tiny on --model ginr_tiny: the model is chosen with --model"),
    (GINR_TINY, ["model="], "the model is chosen with --model, which also applies its training recipe"),
    # masks that do not mean what they say
    (GINR_TINY, ["mask.patch=28"], "mask.patch=28 makes the 28-px image a single cell"),
    (GINR_TINY, ["mask.patch=5"], "mask.patch=5 does not divide the 28-px image"),
    (TRANSINR_TINY, ["mask.patch=3"], "mask.patch=3 does not divide the 28-px image"),
    (GINR_TINY, ["mask.ratio=0.99"], "mask.ratio=0.99 masks every one of the 49 cells"),
    (GINR_TINY, ["mask.patch=14", "mask.ratio=0.8"], "masks every one of the 4 cells (mask.patch=14 on the 28-px"),
    (GINR_TINY, ["mask.kind=bernoulli", "mask.ratio=0.01"], "masks on average less than one of the 49 cells"),
    (MAE_TINY, ["mask.kind=bernoulli", "mask.ratio=0.99"], "leaves on average less than one of the 49 cells visible"),
    (GINR_TINY, ["mask.ratio=0.001"], "mask.ratio=0.001 asks for 0.049 of the 49 cells, which the mask would round"),
    (TRANSINR_TINY, ["mask.kind=block", "mask.ratio=0.005"], "asks for 0.24 of the 49 cells"),
    (MAE_TINY, ["mask.patch=7"], "mask.patch=7 but mae_tiny masks whole 4-px patches"),
    (MAE_TINY, ["model_args.patch_size=28", "mask.patch=28"], "makes the 28-px image a single cell"),
    (MAE_TINY, ["train.coord_noise=coordwise"], "mae_tiny renders none"),
]


def _dry_run(model: str, sets: list[str], tmp_path):
    argv = ["pretrain", "--model", model, "--out", str(tmp_path / "run"), "--dry-run"]
    return CliRunner().invoke(main, argv + [a for s in sets for a in ("--set", s)])


@pytest.mark.parametrize("model, sets, message", ROWS, ids=[f"{i:02d}-{r[1][0]}" for i, r in enumerate(ROWS)])
def test_bad_model_args_and_masks_are_refused_at_dry_run(model, sets, message, tmp_path):
    r = _dry_run(model, sets, tmp_path)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert message in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", [GINR_TINY, TRANSINR_TINY, MAE_TINY])
def test_an_unknown_name_lists_the_valid_ones(model, tmp_path):
    r = _dry_run(model, ["model_args.detph=2"], tmp_path)
    assert r.exit_code == 2 and "detph" in r.output
    names = r.output.split("valid names: ")[1].strip().split(", ")
    assert names == get_spec(model).args.names() and "depth" in names


@pytest.mark.parametrize(
    "model, sets, expect",
    [
        (GINR_TINY, ["model_args.fourier_sigma=64", "model_args.modulated_layer=3"], {"modulated_layer": 3}),
        (TRANSINR_TINY, ["model_args={depth: 2, tokens_per_layer: 8}"], {"depth": 2, "tokens_per_layer": 8}),
        (MAE_TINY, ["model_args.norm_pix_loss=true", "mask.kind=bernoulli", "mask.ratio=0.5"], {"norm_pix_loss": True}),
        (GINR_TINY, ["model=ginr_tiny", "mask.patch=14", "mask.ratio=0.75"], {}),
    ],
)
def test_good_values_pass_and_are_printed(model, sets, expect, tmp_path):
    r = _dry_run(model, sets, tmp_path)
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.output)["model_args"]
    assert {k: printed[k] for k in expect} == expect


def test_each_family_declares_its_arguments_once():
    """The presets' dataclasses are the constructors' only argument; every field reaches the model."""
    classes = {TransINR: "TransINRArgs", GINR: "GINRArgs", MAE: "MAEArgs"}
    for name in list_models():
        spec = get_spec(name)
        assert type(spec.args).__name__ == classes[spec.model_class]
        with torch.device("meta"):
            model = create_model(name)
        assert model.args == spec.args
    assert "ginr_rank" not in TransINR.Args.names() and "tokens_per_layer" not in GINR.Args.names()
    assert set(GINR.Args.names()) - set(TransINR.Args.names()) == {"ginr_rank", "modulated_layer"}


def test_the_api_refuses_what_the_cli_refuses():
    """`create_model` and the dataclasses check themselves: ginr_rank=0, which used to train NaN features."""
    with pytest.raises(MinrError, match="model_args.ginr_rank must be a positive integer, got 0"):
        create_model(GINR_TINY, ginr_rank=0)
    with pytest.raises(MinrError, match="model_args.depth must be an integer, got True"):
        dataclasses.replace(get_spec(GINR_TINY).args, depth=True)
    cfg = default_config(GINR_TINY)
    with pytest.raises(MinrError, match="mask.patch=28 makes"):  # configs read back from checkpoints too
        check_config(dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, patch=28)))


def test_a_small_rank_still_trains_finite():
    model = create_model(GINR_TINY, ginr_rank=1)
    x, mask = torch.rand(2, 1, 28, 28), torch.rand(2, 7, 7) < 0.75
    out = model(x, mask, 4)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(out.loss) and grads and all(torch.isfinite(g).all() for g in grads)


def _edge_values(spec) -> list[tuple[str, object]]:
    """(field, value) at and past every numeric field's edge: zero and negative; for rates and scales also 1, huge
    and not finite."""
    out = []
    for f in dataclasses.fields(spec.args):
        value = getattr(spec.args, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        edges = (0, -1) if isinstance(value, int) else (0.0, -1.0, 1.0, 1e9, float("nan"), float("inf"))
        out += [(f.name, v) for v in edges]
    return out


@pytest.mark.parametrize("model", [GINR_TINY, TRANSINR_TINY, MAE_TINY])
def test_every_numeric_model_arg_at_its_edges_is_refused_in_one_line_or_builds(model):
    """Every int and float argument of every family at 0 and -1 (floats also 1, 1e9, NaN, inf): either a one-line
    MinrError naming the key, or arguments the model builds from (on the meta device): never another exception."""
    spec = get_spec(model)
    for name, value in _edge_values(spec):
        try:
            args = spec.args.with_overrides({name: value}, model)
        except MinrError as e:
            assert f"model_args.{name}" in str(e) and "\n" not in str(e), (name, value, e)
            continue
        with torch.device("meta"):
            built = spec.model_class(args)
        assert sum(p.numel() for p in built.parameters()) > 0, (name, value)
