import json

import pytest
from click.testing import CliRunner

from cli.main import main


@pytest.fixture
def runner():
    return CliRunner()


def test_models_lists_the_registry(runner):
    r = runner.invoke(main, ["models"])
    assert r.exit_code == 0 and "43,746,371" in r.output and "mae_tiny" in r.output


def test_dry_run_prints_resolved_config(runner, tmp_path):
    r = runner.invoke(
        main,
        [
            "pretrain",
            "--model",
            "mae_tiny",
            "--out",
            str(tmp_path),
            "--dry-run",
            "--set",
            "mask.ratio=0.6",
            "--set",
            "optim.lr=3e-4",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "ratio: 0.6" in r.output and "lr: 0.0003" in r.output and "name: adamw" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--set", "mask.ratio=1.5"], "mask.ratio must be in (0, 1)"),
        (["--dataset", "imagefolder:/no/where"], "does not exist"),
        (["--set", "bogus=1"], "unknown config key"),
    ],
)
def test_user_mistakes_are_one_line_errors(runner, tmp_path, fashion_small, args, message):
    base = ["pretrain", "--model", "ginr_tiny", "--out", str(tmp_path / "r"), "--data-root", str(fashion_small)]
    r = runner.invoke(main, base + args)
    assert r.exit_code == 2 and message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_pretrain_inspect_reconstruct_compare(runner, tmp_path, fashion_small):
    run = tmp_path / "run"
    r = runner.invoke(
        main,
        [
            "pretrain",
            "--model",
            "ginr_tiny",
            "--data-root",
            str(fashion_small),
            "--max-steps",
            "3",
            "--batch-size",
            "16",
            "--out",
            str(run),
            "--quiet",
            "--set",
            "train.val_max_images=16",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "psnr_masked" in r.output
    ckpt = run / "checkpoint.safetensors"
    r = runner.invoke(main, ["inspect", str(ckpt), "--json"])
    info = json.loads(r.output)
    assert info["model"] == "ginr_tiny" and info["step"] == 3 and len(info["weights_sha256"]) == 64
    r = runner.invoke(
        main, ["reconstruct-grid", str(ckpt), "--scale", "2", "--num-images", "3", "--out", str(tmp_path / "g.png")]
    )
    assert r.exit_code == 0, r.output
    from PIL import Image

    w, h = Image.open(tmp_path / "g.png").size
    assert (w, h) == (2 + 5 * (56 + 2), 2 + 3 * (56 + 2))  # 5 columns, 3 rows of 56 px with 2 px padding
    r = runner.invoke(main, ["compare", str(run), "--out", str(tmp_path / "c.md")])
    assert r.exit_code == 0 and "ginr_tiny" in (tmp_path / "c.md").read_text()
    # a truncated checkpoint is a clean error
    (tmp_path / "cut.safetensors").write_bytes(ckpt.read_bytes()[:100])
    r = runner.invoke(main, ["inspect", str(tmp_path / "cut.safetensors")])
    assert r.exit_code == 2 and "truncated" in r.output


def test_unreadable_image_in_a_worker_is_named(runner, tmp_path, imagefolder):
    (imagefolder / "train" / "n01440764" / "zz_broken.JPEG").write_bytes(b"garbage")
    r = runner.invoke(
        main,
        [
            "pretrain",
            "--model",
            "mae_tiny",
            "--dataset",
            f"imagefolder:{imagefolder}",
            "--out",
            str(tmp_path / "r"),
            "--batch-size",
            "2",
            "--max-steps",
            "8",
            "--quiet",
            "--set",
            "data.workers=1",
            "--set",
            "mask.patch=4",
        ],
    )
    assert r.exit_code == 2 and "zz_broken.JPEG" in r.output and "--skip-bad-images" in r.output
    assert len(r.output.strip().splitlines()) == 1


HEAVY = ("torch", "timm", "torchvision", "mmseg", "mmcv")
LIGHT_COMMANDS = [
    ["--help"],
    ["pretrain", "--help"],
    ["inspect", "--help"],
    ["reconstruct", "--help"],
    ["reconstruct-grid", "--help"],
    ["bench", "--help"],
    ["data", "make-fashion-scenes", "--help"],
    ["nonsense"],  # usage errors
    ["pretrain", "--model", "ginr_tiny"],
    ["pretrain", "--model", "ginr_tiny", "--out", "r", "--set", "mask.ratio"],
    ["pretrain", "--model", "ginr_tiny", "--out", "r", "--seed", "-1"],
    ["pretrain", "--model", "ginr_tiny", "--out", "r", "--set", "train="],  # keys and types, before the registry
    ["pretrain", "--model", "ginr_tiny", "--out", "r", "--set", "train.max_steps=2.5"],
    ["pretrain", "--model", "ginr_tiny", "--out", "r", "--set", "optim.nme=1"],
    ["reconstruct"],
    ["models"],  # the registry's names, families and declared sizes
    ["pretrain", "--model", "nope", "--out", "r"],
    ["pretrain", "--model", "ginr_tiny", "--out", "r", "--set", "model=mae_tiny"],
]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=[" ".join(a) for a in LIGHT_COMMANDS])
def test_help_and_usage_errors_do_not_import_torch(args, tmp_path):
    """`minrctl --help` and the mistakes caught before any work answer without loading torch, timm, torchvision
    or mmseg (they took 3-8 s and 1.1 GB): what is loaded after the command ran, in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cli.main import main\n"
        "try:\n"
        f"    main({args!r}, prog_name='minrctl')\n"
        "except SystemExit as e:\n"
        "    print('EXIT', e.code, file=sys.stderr)\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    exit_code = int(r.stderr.split("EXIT ", 1)[1].split()[0])
    assert exit_code == (0 if "--help" in args or args == ["models"] else 2), r.stderr
    assert r.stderr.strip().splitlines()[-1] == "LOADED []", r.stderr


def test_documented_read_only_commands_run_in_a_fresh_process(tmp_path, fashion_small):
    """`minrctl models` and `minrctl inspect` as a user runs them, in a fresh interpreter (nothing imported by the
    test first: the registry of checkpoint layouts and the lazy model classes must load by themselves), for
    every family."""
    import subprocess
    import sys

    from tests.conftest import ROOT, make_checkpoint

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cli.main", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

    r = cli("models")
    assert r.returncode == 0 and all(n in r.stdout for n in ("ginr_tiny", "transinr_tiny", "mae_tiny")), r.stderr
    for name in ("ginr_tiny", "transinr_tiny", "mae_tiny"):
        ckpt = make_checkpoint(name, tmp_path / name / "checkpoint.safetensors", data_root=fashion_small)
        r = cli("inspect", "--json", str(ckpt))
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["model"] == name and "Traceback" not in r.stderr
