import pytest

from minr.build import default_config
from minr.config import MaskConfig, PretrainConfig, apply_overrides, from_dict, parse_set, to_dict
from minr.errors import MinrError


def test_recipe_then_overrides():
    cfg = default_config("transinr_paper")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule, cfg.train.batch_size) == ("adam", 1e-4, "step", 16)
    cfg = default_config("mae_base_paper", parse_set(["optim.lr=3e-4", "mask.ratio=0.6", "optim.betas=[0.9, 0.9]"]))
    assert cfg.optim.lr == 3e-4 and cfg.mask.ratio == 0.6 and cfg.optim.betas == (0.9, 0.9)
    assert cfg.optim.name == "adamw" and cfg.optim.weight_decay == 0.05


def test_roundtrip_through_dict():
    cfg = default_config("ginr_tiny", {"model_args.depth": 2, "train.max_steps": 5})
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_mask_ratio_validated(ratio):
    with pytest.raises(MinrError, match="mask.ratio"):
        MaskConfig(ratio=ratio)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"mask.ratio": 1.2}, "mask.ratio"),
        ({"optim.nme": "sgd"}, "unknown config key"),
        ({"train.epochs": "many"}, "train.epochs"),
        ({"mask.kind": "stripes"}, "mask.kind"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(MinrError, match=message):
        apply_overrides(default_config("ginr_tiny"), override)


def test_parse_set_rejects_missing_equals():
    with pytest.raises(MinrError, match="KEY=VALUE"):
        parse_set(["mask.ratio"])
