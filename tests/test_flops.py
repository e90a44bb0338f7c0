"""Counted training FLOPs and step budgets matched by them."""

import pytest

from minr.build import default_config
from minr.errors import MinrError
from minr.flops import equal_compute, match_budget, step_budget, train_flops_per_image


def test_mae_matched_to_ginr_gets_the_same_flops_in_more_steps():
    ginr, mae = equal_compute("ginr_tiny", "mae_tiny", steps=843, batch_size=64)
    assert (ginr.model, ginr.steps, ginr.matched_to) == ("ginr_tiny", 843, None)
    assert (mae.model, mae.batch_size, mae.matched_to) == ("mae_tiny", 64, "ginr_tiny")
    one_step = mae.flops_per_image * mae.batch_size
    assert abs(mae.steps * one_step - ginr.flops) <= one_step / 2  # the nearest whole step
    assert mae.steps > 4 * ginr.steps  # a MINR step costs several MAE steps at 28 px
    assert ginr.flops_per_image > 4 * mae.flops_per_image


def test_a_dearer_model_gets_fewer_steps_and_a_model_matched_to_itself_the_same():
    mae, ginr = equal_compute("mae_tiny", "ginr_tiny", steps=843, batch_size=64)
    assert ginr.steps < mae.steps and ginr.matched_to == "mae_tiny"
    cfg = default_config("mae_tiny", {"train.batch_size": 32})
    again = match_budget(mae, cfg)  # half the batch: twice the steps
    assert again.steps == 2 * mae.steps and again.flops == pytest.approx(mae.flops)


def test_the_count_follows_the_runs_own_shapes_mask_and_rendering():
    mae = {r: train_flops_per_image(default_config("mae_tiny", {"mask.ratio": r})) for r in (0.5, 0.75)}
    assert mae[0.5] > mae[0.75]  # MAE's encoder sees only the visible tokens
    ginr = {f: train_flops_per_image(default_config("ginr_tiny", {"train.render_fraction": f})) for f in (0.25, 1)}
    assert ginr[0.25] < ginr[1]  # rendering a quarter of the pixels
    big = equal_compute("ginr_tiny", "mae_tiny", steps=10, batch_size=8, image_size=32)
    small = equal_compute("ginr_tiny", "mae_tiny", steps=10, batch_size=8)
    # 1.3x the pixels and MAE's tokens; MINR's INR weight tokens stay as many: its step grows less, MAE gets fewer
    assert big[1].flops_per_image > 1.25 * small[1].flops_per_image
    assert small[0].flops_per_image < big[0].flops_per_image < 1.25 * small[0].flops_per_image
    assert big[1].steps < small[1].steps


def test_bad_budgets_are_refused():
    with pytest.raises(MinrError, match="at least 1"):
        step_budget(default_config("mae_tiny"), 0)
    with pytest.raises(MinrError, match="unknown model"):
        equal_compute("ginr_tiny", "mae_tinyy", steps=10, batch_size=8)
