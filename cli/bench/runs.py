"""The bench's pretraining runs and where everything lies: every model per seed, the equal-compute arm, the
checkpoints each downstream stage reads (finals, the learning curve's, the random initialisations)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.bench.config import BenchConfig
from minr.build import default_config
from minr.config import PretrainConfig
from minr.errors import MinrError
from minr.loop import kept_path


@dataclass(frozen=True)
class Run:
    """One pretraining run of the bench's models: its folder's name, its model, seed and step budget.
    `matched_to` names the MINR model whose training FLOPs this run matches (the equal-compute arm)."""

    name: str
    model: str
    seed: int
    steps: int
    matched_to: str | None = None


class Bench:
    """One bench run in `out`: its pretraining runs, where each stage's outputs are and which checkpoints each
    stage reads."""

    def __init__(self, cfg: BenchConfig, out: Path, *, quiet: bool = True) -> None:
        self.cfg, self.out, self.quiet = cfg, out, quiet
        self._runs: list[Run] | None = None

    def run_dir(self, name: str) -> Path:
        return self.out / "pretrain" / name

    def ckpt(self, run: str, step: int | None = None) -> str:
        final = self.run_dir(run) / "checkpoint.safetensors"
        return str(final if step is None else kept_path(final, step))

    def runs(self) -> list[Run]:
        """Every model for every seed (seed 0 keeps the model's own name), then, with `equal_flops`, each cheaper
        model for each MINR model's training FLOPs (counted once per model with torch's FLOP counter)."""
        if self._runs is None:
            p, out = self.cfg.pretrain, []
            cost = _costs(self) if p.equal_flops else {}
            for k in range(p.seeds):
                seed, tag = p.seed + k, "" if k == 0 else f"-seed{p.seed + k}"
                out += [Run(f"{m}{tag}", m, seed, p.steps) for m in self.cfg.models]
                for target, (family, flops) in cost.items():
                    for m, (_, f) in cost.items():
                        if family == "minr" and f < flops:
                            steps = round(p.steps * flops / f)
                            out.append(Run(f"{m}-flops-{target}{tag}", m, seed, steps, matched_to=target))
            self._runs = out
        return self._runs

    def final(self) -> list[str]:
        return [self.ckpt(r.name) for r in self.runs()]

    def names(self) -> list[str]:
        return [r.name for r in self.runs()]

    def extras(self) -> list[str]:
        return [self.ckpt(e.name) for e in self.cfg.pretrain.extra]

    def curve(self) -> list[tuple[str, int, str]]:
        """(model, step, checkpoint) of every kept checkpoint of the first seed, for the learning curve."""
        return [(m, s, self.ckpt(m, s)) for m in self.cfg.models for s in self.cfg.pretrain.kept_steps()]

    def scratch(self) -> list[tuple[str, str]]:
        """(name, checkpoint) of every architecture's random initialisation per seed (step 0 of its run): the
        from-scratch controls."""
        return [(f"{r.name}@init", self.ckpt(r.name, 0)) for r in self.runs() if r.matched_to is None]

    def scratch_first(self) -> list[tuple[str, str]]:
        """The random initialisations of the first seed's models."""
        return [(f"{m}@init", self.ckpt(m, 0)) for m in self.cfg.models]

    def run_of(self, ckpt: str) -> str:
        """The pretraining run whose architecture a checkpoint of the bench has (finals, curve, initialisations)."""
        names = {self.ckpt(n): n for n in self.model_of_run()}
        names |= {c: n.split("@")[0] for n, c in [*self.scratch(), *self.scratch_first()]}
        names |= {c: m for m, _, c in self.curve()}
        return names[ckpt]

    def model_of_run(self) -> dict[str, str]:
        """Every pretraining run's (the bench's and the extra ones) model preset."""
        return {r.name: r.model for r in self.runs()} | {e.name: e.model for e in self.cfg.pretrain.extra}

    def model_of(self, run: str) -> str:
        return self.model_of_run()[run]

    def log(self, message: str) -> None:
        if not self.quiet:
            from minr.progress import console

            console.print(message)


def _costs(b: Bench) -> dict[str, tuple[str, float]]:
    """model -> (family, training FLOPs per image: one forward and backward of its own loss, counted)."""
    from minr.flops import train_flops_per_image

    return {m: (family(m), train_flops_per_image(cfg)) for m, cfg in base_configs(b).items()}


def family(model: str) -> str:
    """A registered model's family, from a model built on the meta device (no memory, no init)."""
    import torch

    from minr.models import create_model

    with torch.device("meta"):
        return create_model(model).family


def encoders(
    b: Bench, *, scratch: bool, seeds: int | None = None
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(names, checkpoints, groups) a downstream stage trains from: every run's final checkpoint and, as the
    from-scratch control, every architecture's random initialisation per seed. Groups pair MINR with MAE within
    a seed (and initialisations with initialisations). `seeds` keeps the first that many pretraining seeds."""
    last = b.cfg.pretrain.seed + (b.cfg.pretrain.seeds if seeds is None else seeds)
    seed = {r.name: r.seed for r in b.runs() if r.seed < last}
    rows = [(r.name, b.ckpt(r.name), f"seed{r.seed}") for r in b.runs() if r.name in seed]
    if scratch:
        inits = [(n, c, n.split("@")[0]) for n, c in b.scratch()]
        rows += [(n, c, f"init-seed{seed[run]}") for n, c, run in inits if run in seed]
    names, ckpts, groups = zip(*rows, strict=True)
    return names, ckpts, groups


def need(cfg: BenchConfig, section: str, value: str | None) -> str:
    if value is None:
        raise MinrError(f"the {cfg.name} preset needs --set {section}.dataset=NAME (for example imagefolder:PATH)")
    return value


def base_overrides(b: Bench) -> dict[str, Any]:
    """The overrides every pretraining run shares: the data, the first seed, the step budget (steps bound it; the
    recipes' epochs do not), the batch, and `pretrain.set`."""
    p = b.cfg.pretrain
    return {
        "data.name": need(b.cfg, "pretrain", p.dataset),
        "data.root": p.data_root,
        "train.seed": p.seed,
        "train.max_steps": p.steps,
        "train.epochs": None,
        "train.batch_size": p.batch_size,
        **p.set,
    }


def base_configs(b: Bench) -> dict[str, PretrainConfig]:
    """Each model's config under the shared budget (the first seed's run)."""
    return {m: default_config(m, base_overrides(b)) for m in b.cfg.models}
