"""The bench's stages: registered once, every bad value refused when the preset is read (before any stage runs),
and an --out the bench did not write is never touched."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from cli.bench.config import load_preset
from cli.bench.run import BY_NAME, STAGES, estimate, validate
from cli.bench.stages import COMPUTE, selected
from cli.main import main
from minr.errors import MinrError


def test_every_stage_is_registered_once_in_order():
    names = [s.name for s in STAGES]
    assert names == ["pretrain", "reconstruct", "probe", "finetune", "segment", "report"]
    assert len(set(names)) == len(names) and set(BY_NAME) == set(names)
    assert all(s.does for s in STAGES) and [s.name for s in COMPUTE] == names[:-1]
    assert selected(load_preset("quick")) == names
    assert selected(load_preset("quick", stages=("report", "pretrain"))) == ["pretrain", "report"]


# (--set or option, what the one-line error must say); every row is refused at --dry-run, before anything runs
BAD = [
    (["--set", "probe.seeds=0"], "--seeds must be >= 1"),
    (["--set", "probe.epochs=0"], "--epochs must be >= 1"),
    (["--set", "probe.mask_ratios=[1.0]"], "--mask-ratios must lie in [0, 1)"),
    (["--set", "probe.max_images=0"], "data.max_images must be positive"),
    (["--set", "finetune.batch_size=-1"], "--batch-size must be >= 1"),
    (["--set", "finetune.epochs=0"], "--epochs must be >= 1"),
    (["--set", "finetune.seeds=0"], "--seeds must be >= 1"),
    (["--set", "segment.frozen.max_steps=0"], "--max-steps must be >= 1"),
    (["--set", "segment.full.batch_size=0"], "--batch-size must be >= 1"),
    (["--set", "segment.backbones=[pixelz]"], "--backbone"),
    (["--set", "segment.scenes_val=0"], "segment.scenes_val must be positive"),
    (["--set", "reconstruct.mask_ratios=[1.5]"], "--mask-ratios must lie in (0, 1)"),
    (["--set", "reconstruct.mask_kinds=[stripes]"], "unknown kind 'stripes'"),
    (["--set", "reconstruct.split=dev"], "--split must be train, val or test"),
    (["--set", "reconstruct.max_images=0"], "--max-images must be >= 1"),
    (["--set", "pretrain.steps=0"], "pretrain.steps must be positive"),
    (["--set", "pretrain.batch_size=0"], "pretrain.batch_size must be positive"),
    (["--set", "pretrain.curve=[2]"], "pretrain.curve fractions must lie in [0, 1]"),
    (["--set", "pretrain.set={optim.lr: -1}"], "optim.lr must be a positive finite number"),
    (["--set", "pretrain.set={train.log: paper}"], "train.log must be csv or tensorboard"),
    (["--set", "pretrain.extra=[{name: a, model: vit}]"], "unknown model 'vit'"),
    (["--set", "pretrain.extra=[{name: a, model: ginr_tiny}, {name: a, model: mae_tiny}]"], "two runs are named 'a'"),
    (["--set", "pretrain.extra=[3]"], "each run is a mapping"),
    (["--set", "probe.dataset=null"], "needs --set probe.dataset=NAME"),
    (["--set", "probe.seeds=two"], "probe.seeds"),
    (["--set", "train.batch_size=8"], "`minrctl bench --preset quick --dry-run`"),
    (["--set", "segment.crop=0"], "--crop must be >= 1"),
    (["--set", "segment.pretrain_seeds=0"], "segment.pretrain_seeds must be positive"),
    (["--set", "segment.pretrain_seeds=2"], "segment.pretrain_seeds is 2 but pretrain.seeds only 1"),
    (["--set", "plan.mfu=2"], "plan.mfu must be in (0, 1]"),
    (["--set", "plan.gpus=[0]"], "plan.gpus must be counts >= 1"),
    (["--set", "plan.train_images=0"], "plan.train_images must be positive"),
    (["--models", "mae_tiny,mae_tiny"], "--models names 'mae_tiny' twice"),
    (["--stages", "probe,probe"], "--stages names 'probe' twice"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_bench_values_are_refused_before_any_stage(args, message, tmp_path):
    out = tmp_path / "b"
    for dry in (["--dry-run"], []):
        r = CliRunner().invoke(main, ["bench", "--preset", "quick", "--out", str(out), *args, *dry])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.output
        assert not out.exists()  # refused before the bench wrote anything


def test_out_the_bench_did_not_write_is_refused_and_kept(tmp_path, monkeypatch):
    mine = tmp_path / "x"
    (mine / "report").mkdir(parents=True)
    (mine / "report" / "notes.txt").write_text("keep me")
    (mine / "pretrain" / "myrun").mkdir(parents=True)
    for stages in ("report", "pretrain"):
        r = CliRunner().invoke(main, ["bench", "--out", str(mine), "--stages", stages])
        assert r.exit_code == 2 and "no bench record" in r.output and "choose another --out" in r.output, r.output
    assert (mine / "report" / "notes.txt").read_text() == "keep me" and (mine / "pretrain" / "myrun").is_dir()
    monkeypatch.chdir(mine)  # `cd d && minrctl bench --out "$UNSET"`: ./report/ is the user's
    r = CliRunner().invoke(main, ["bench", "--out", "", "--stages", "report"])
    assert r.exit_code == 2 and "--out must name a folder" in r.output
    assert (mine / "report" / "notes.txt").read_text() == "keep me" and (mine / "pretrain" / "myrun").is_dir()
    (tmp_path / "f").write_text("a file")
    r = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "f"), "--dry-run"])
    assert r.exit_code == 2 and "is a file" in r.output and (tmp_path / "f").read_text() == "a file"


def test_a_bench_folder_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    cfg = load_preset("quick")
    (out / "bench.json").write_text(json.dumps({"config": json.loads(json.dumps(dataclasses.asdict(cfg)))}))
    (out / "thesis.tex").write_text("mine")
    r = CliRunner().invoke(main, ["bench", "--out", str(out), "--stages", "report"])
    assert r.exit_code == 2 and "thesis.tex, which the bench did not write" in r.output
    (out / "thesis.tex").unlink()
    (out / "report").mkdir()
    (out / "report" / "draft.md").write_text("mine")  # a stage folder without the bench's record
    r = CliRunner().invoke(main, ["bench", "--out", str(out), "--stages", "report"])
    assert r.exit_code == 2 and "was not written by the bench" in r.output
    assert (out / "report" / "draft.md").read_text() == "mine"


def test_report_of_nothing_is_refused(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "e"), "--stages", "report"])
    assert r.exit_code == 2 and "holds no finished stage to report on" in r.output, r.output
    assert not (tmp_path / "e" / "report.md").exists()


def test_time_estimate_follows_the_configured_work():
    quick = load_preset("quick")
    small = validate(
        load_preset(
            "quick",
            {
                "pretrain.steps": 3,
                "probe.max_images": 200,
                "probe.curve_max_images": 100,
                "segment.frozen.max_steps": 3,
            },
        )
    )
    for name, ratio in (("pretrain", 3 / 150), ("reconstruct", 1.0)):
        stage = BY_NAME[name]
        assert estimate(small, stage) == pytest.approx(quick.expected_s[name] * ratio)
    assert estimate(small, BY_NAME["probe"]) < estimate(quick, BY_NAME["probe"]) / 5
    assert estimate(small, BY_NAME["segment"]) < estimate(quick, BY_NAME["segment"])
    one = load_preset("quick", models=("ginr_tiny",))
    assert estimate(one, BY_NAME["pretrain"]) == pytest.approx(quick.expected_s["pretrain"] / 3)  # one of three


def test_library_errors_name_the_bench_keys():
    with pytest.raises(MinrError, match="minrctl bench --preset cpu-full --dry-run"):
        load_preset("cpu-full", {"train.max_steps": 3})


@pytest.mark.slow
def test_seeds_and_equal_flops_arm(tmp_path, fashion_small):
    """Two pretraining seeds and the equal-compute arm: every run exists, MAE's matched run has more steps, and
    the report compares MINR with MAE over seeds at both budgets."""
    from tests.test_bench import tiny

    out = tmp_path / "s"
    sets = ["--set", "pretrain.seeds=2", "--set", "pretrain.equal_flops=true", "--stages", "pretrain,probe,report"]
    sets += ["--set", "probe.mask_ratios=[0]", "--set", "probe.max_images=100"]
    r = CliRunner().invoke(main, ["bench", "--preset", "quick", "--out", str(out), *tiny(str(fashion_small)), *sets])
    assert r.exit_code == 0, r.output
    runs = sorted(p.name for p in (out / "pretrain").iterdir() if p.is_dir())
    assert runs == sorted(
        [
            "ginr_tiny",
            "mae_tiny",
            "mae_tiny-flops-ginr_tiny",
            "ginr_tiny-seed1",
            "mae_tiny-seed1",
            "mae_tiny-flops-ginr_tiny-seed1",
        ]
    )
    steps = {n: json.loads((out / "pretrain" / n / "summary.json").read_text())["steps"] for n in runs}
    assert steps["ginr_tiny"] == 4 and steps["mae_tiny-flops-ginr_tiny"] > 4 * 3  # MINR steps cost several MAE's
    res = json.loads((out / "results.json").read_text())
    head = {h["model"]: h for h in res["headline"]}  # the first seed's runs, the equal-FLOPs one with its steps
    assert list(head) == ["ginr_tiny", "mae_tiny", "mae_tiny (FLOPs of ginr_tiny)", "raw pixels (floor)"]
    assert head["mae_tiny (FLOPs of ginr_tiny)"]["pretrain steps"] == f"{steps['mae_tiny-flops-ginr_tiny']:,}"
    assert head["mae_tiny (FLOPs of ginr_tiny)"]["best linear %"] and head["ginr_tiny"]["pretrain steps"] == "4"
    got = {(c["metric"], c["arm"]) for c in res["seed_level"]}
    arms = ("equal steps", "equal FLOPs", "gain over scratch")
    assert got == {(m, a) for m in ("probe linear", "probe knn") for a in arms}
    for c in res["seed_level"]:  # the probes keep the first seed's random initialisations only
        seeds = 1 if c["arm"] == "gain over scratch" else 2
        assert c["result"]["seeds"] == seeds and len(c["result"]["per_seed"]) == seeds, c
    md = (out / "report.md").read_text()
    assert "## MINR - MAE over pretraining seeds" in md and "Over 2 pretraining seed(s)" in md
    assert "ginr_tiny@init:" in md  # the randomly initialised encoders are in the probe table
    # a bench folder moved elsewhere reports the same comparisons (nothing is keyed by the old path)
    moved = tmp_path / "moved"
    out.rename(moved)
    args = ["bench", "--preset", "quick", "--out", str(moved), *tiny(str(fashion_small))]
    args += [a for a in sets if a not in ("--stages", "pretrain,probe,report")]
    again = CliRunner().invoke(main, [*args, "--stages", "report"])
    assert again.exit_code == 0, again.output
    assert json.loads((moved / "results.json").read_text())["seed_level"] == res["seed_level"]


def test_segmentation_can_train_on_the_first_pretraining_seeds_and_is_compared_over_those(tmp_path, monkeypatch):
    """segment.pretrain_seeds=1 of 2: segmentation trains the first seed's encoders and initialisations only, and
    the seed-level comparison of a metric draws on the seeds it has (one seed: never established), while a metric
    with both seeds is compared over both."""
    import numpy as np

    from cli.bench import seeds as seeds_module
    from cli.bench.runs import Bench
    from cli.bench.training_stages import Segment

    over = {"pretrain.seeds": 2, "segment.pretrain_seeds": 1, "segment.scratch": True, "finetune.scratch": True}
    b = Bench(load_preset("quick", over, models=("ginr_tiny", "mae_tiny")), tmp_path)
    seg = Segment().configs(b)["frozen"]
    assert seg.names == ("ginr_tiny", "mae_tiny", "ginr_tiny@init", "mae_tiny@init")
    assert seg.groups == ("seed0", "seed0", "init-seed0", "init-seed0")
    from cli.bench.training_stages import Finetune

    assert len(Finetune().configs(b).names) == 8  # fine-tuning keeps both seeds

    rng = np.random.default_rng(0)
    both = {n: rng.random(200) < 0.8 for n in b.names()} | {"ginr_tiny@init": rng.random(200) < 0.5}
    first = {n: rng.random(200) for n in ("ginr_tiny", "mae_tiny", "ginr_tiny@init")}

    class Fake:
        def outcomes(self, _b):
            return {"probe linear": both, "segmentation frozen tokens": first}

    monkeypatch.setattr(seeds_module, "COMPUTE", [Fake()])
    got = {(c.metric, c.arm): c.result for c in seeds_module.comparisons(b)}
    assert got[("probe linear", "equal steps")].seeds == 2
    seg_steps = got[("segmentation frozen tokens", "equal steps")]
    assert seg_steps.seeds == 1 and not seg_steps.established
    assert got[("segmentation frozen tokens", "gain over scratch")].seeds == 1


@pytest.mark.slow
def test_scratch_controls_are_trained_for_every_model(tmp_path, fashion_small):
    """finetune.scratch and segment.scratch: every architecture is also fine-tuned and segmented from its random
    initialisation (its run's step-0 checkpoint), and the report gives each model's gain over scratch there."""
    from tests.test_bench import tiny

    out = tmp_path / "c"
    sets = ["--set", "finetune.scratch=true", "--set", "segment.scratch=true", "--set", "finetune.epochs=1"]
    sets += ["--set", "segment.backbones=[tokens]", "--stages", "pretrain,finetune,segment,report"]
    r = CliRunner().invoke(main, ["bench", "--preset", "quick", "--out", str(out), *tiny(str(fashion_small)), *sets])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    models = ("ginr_tiny", "mae_tiny")
    assert {e["name"] for e in res["finetune"]["entries"]} == {*models, *(f"{m}@init" for m in models)}
    for regime in ("frozen", "full"):
        names = {e["name"] for e in res["segment"][regime]["entries"]}
        assert {f"{m}@init:tokens" for m in models} <= names and {f"{m}:tokens" for m in models} <= names
    gains = {(c["metric"], c["result"]["a"]) for c in res["seed_level"] if c["arm"] == "gain over scratch"}
    for metric in ("fine-tuning", "segmentation frozen tokens", "segmentation full tokens"):
        assert {(metric, m) for m in models} <= gains, (metric, gains)


def test_learning_curve_says_where_it_meets_the_pixel_floor():
    from cli.bench.verdict import crossing

    rising = [(0, 0.70), (10, 0.60), (30, 0.81), (100, 0.85)]
    text = crossing(rising, 0.80, 64, "linear", "ginr_tiny")
    assert "reaches the pixel floor (80.00%) at step 30 (1,920 images seen; 81.00%)" in text
    assert "+5.00 points against it at the end" in text and "+4.00 points over its last stretch (since step 30)" in text
    below = [(0, 0.90), (10, 0.60), (30, 0.75), (100, 0.72)]  # the random init above the floor does not count
    text = crossing(below, 0.80, 64, "k-NN", "mae_tiny")
    assert "does not reach the pixel floor (80.00%) within 100 steps (6,400 images): best 75.00% at step 30" in text
    assert "5.00 points below" in text and "-3.00 points over its last stretch (since step 30)" in text
    assert crossing(below, None, 64, "k-NN", "mae_tiny").endswith("at step 100; no pixel floor was probed.")
