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


def test_a_section_is_merged_key_by_key_never_reset():
    base = default_config("ginr_tiny", {"train.max_steps": 3, "train.batch_size": 8, "train.device": "cpu"})
    cfg = apply_overrides(base, {"train": {"epochs": 2}, "model_args": {"depth": 2}})
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size, cfg.train.device) == (2, 3, 8, "cpu")
    assert cfg.model_args["depth"] == 2 and cfg.optim == base.optim


@pytest.mark.parametrize(
    "items, message",
    [
        (["train="], "--set train=: train is a section, not a value; set its keys one at a time"),
        (["data=5"], "--set data=5: data is a section"),
        (["model_args="], "model_args is a section"),
        (["optim=adamw"], "--set optim.name=..."),
        (["mask=[4, 0.5]"], "--set 'mask={kind: ...}'"),
        (["train.max_steps=2.5"], "--set train.max_steps: expected an integer or null, got 2.5"),
        (["train.batch_size=true"], "--set train.batch_size: expected an integer, got true"),
        (["optim.betas=0.9"], "--set optim.betas: expected a list of 2 numbers, got 0.9"),
        (["optim.betas=[0.9]"], "expected a list of 2 numbers, got 1 value(s)"),
        (["optim.clip_grad=[1]"], "--set optim.clip_grad: expected a number or null, got [1]"),
        (["data.name=null"], "--set data.name: expected a string, got null"),
        (["data.skip_bad_images=maybe"], "--set data.skip_bad_images: expected true or false, got 'maybe'"),
        (["train.keep_checkpoints=[1, x]"], "--set train.keep_checkpoints[1]: expected an integer, got 'x'"),
        (["train.seed=9223372036854775808"], "--set train.seed: 9223372036854775808 is out of range"),
        (["train.seed=-1"], "train.seed must be in [0, 2^63-1], got -1"),
        (["data.root.sub=1"], "data.root is a single value, not a section"),
        (["train.nope=1"], "unknown config key 'train.nope'; the keys in train are epochs, batch_size"),
    ],
)
def test_overrides_are_typed_where_they_enter(items, message):
    with pytest.raises(MinrError) as e:
        default_config("ginr_tiny", parse_set(items))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_largest_seed_is_accepted():
    assert default_config("ginr_tiny", {"train.seed": 2**63 - 1}).train.seed == 2**63 - 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": 5}, "train: expected a mapping, got 5"),
        ({"train": {"epochs": "many"}}, "train.epochs: expected an integer"),
        ({"optim": {"betas": [0.9, "x"]}}, "optim.betas[1]: expected a number, got 'x'"),
    ],
)
def test_stored_configs_are_typed_too(change, message):
    """A checkpoint's metadata goes through the same checks (from_dict), with the key named."""
    data = {**to_dict(default_config("ginr_tiny")), **change}
    with pytest.raises(MinrError, match=message.replace("[", r"\[")):
        from_dict(PretrainConfig, data)
