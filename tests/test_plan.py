"""`minrctl bench --plan`: the jobs are the bench's own, FLOPs are the counted ones times the configured work, memory
per process falls with more processes, the GPU figures follow from the FLOPs, and nothing is trained."""

import json

from click.testing import CliRunner

from cli.bench.config import load_preset
from cli.bench.plan import GPUS
from cli.bench.runs import Bench, base_configs
from cli.main import main
from minr.config import parse_set
from minr.flops import train_flops_per_image


def test_plan_counts_the_bench_jobs_and_trains_nothing(fashion_small, tmp_path):
    out = tmp_path / "bench"
    sets = ["pretrain.steps=7", "pretrain.batch_size=16", f"pretrain.data_root={fashion_small}"]
    sets += ["segment.backbones=[tokens,pixels]", "segment.frozen.max_steps=3", "segment.full.max_steps=5"]
    args = ["bench", "--preset", "quick", "--models", "ginr_tiny,mae_tiny", "--stages", "pretrain,finetune,segment"]
    args += ["--out", str(out), "--plan", "--quiet", *[x for s in sets for x in ("--set", s)]]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "plan.md"]  # nothing trained, nothing else written
    stages = {s["stage"]: s for s in plan["stages"]}
    assert list(stages) == ["pretrain", "finetune", "segment"]
    cfg = load_preset("quick", parse_set(sets), models=("ginr_tiny", "mae_tiny"))
    counted = sum(train_flops_per_image(c) * 7 * 16 for c in base_configs(Bench(cfg, out)).values())
    assert abs(stages["pretrain"]["flops"] - counted) < 1e-6 * counted
    # 2 encoders x tokens + the pixel floor, in both regimes; 2 fine-tuning runs
    assert stages["segment"]["jobs"] == 6 and stages["finetune"]["jobs"] == 2
    for s in stages.values():
        assert s["flops"] > 0 and s["seconds_here"] > 0
        assert 0 < s["peak_mb"]["8"] <= s["peak_mb"]["1"]
    md = (out / "plan.md").read_text()
    h100 = stages["pretrain"]["flops"] / (8 * GPUS["H100 (SXM)"] * 0.4)
    assert "H100 (SXM) x8" in md and h100 > 0 and "40% of each GPU" in md
    # a bench may follow its plan in the same folder
    r = CliRunner().invoke(main, [*args[: -2 * len(sets) - 2], "--dry-run"])
    assert r.exit_code == 0, r.output


def test_plan_needs_image_counts_it_cannot_read(tmp_path):
    args = ["bench", "--preset", "paper", "--stages", "finetune", "--out", str(tmp_path / "p"), "--plan"]
    args += ["--set", "finetune.dataset=imagefolder:/nowhere", "--set", "pretrain.dataset=imagefolder:/nowhere"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "plan.train_images" in r.output and "Traceback" not in r.output


def test_plan_of_the_report_alone_is_refused(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--stages", "report", "--out", str(tmp_path / "p"), "--plan"])
    assert r.exit_code == 2 and "run nothing to plan" in r.output
