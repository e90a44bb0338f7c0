"""Configs and models from names, and encoders back from checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minr.config import MaskConfig, PretrainConfig, apply_overrides, from_dict
from minr.errors import MinrError
from minr.models import ModelArgs, create_model, get_spec, resolve_model_args

if TYPE_CHECKING:
    import torch

    from minr.models import Encoder

# torch (and the checkpoint and masking modules that import it) is imported where a model or a file is touched:
# a config's names, keys and types are checked without it (`minrctl pretrain --model nope` answers at once).


def default_config(model: str, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """The preset's recipe, then the user's dotted overrides; validated with every check of the model and mask
    that the run makes before it builds anything (so `minrctl pretrain --dry-run` refuses what the run refuses)."""
    spec = get_spec(model)
    other = (overrides or {}).get("model", model)
    if other != model:  # another preset's architecture under this preset's recipe would be neither of them
        raise MinrError(
            f"--set model={other} on --model {model}: the model is chosen with --model, which also applies its "
            f"training recipe; use {f'--model {other}' if isinstance(other, str) else '--model alone'}"
        )
    cfg = apply_overrides(PretrainConfig(model=model), spec.recipe)
    cfg = apply_overrides(cfg, overrides or {})
    check_config(cfg)
    return cfg


def check_config(cfg: PretrainConfig) -> ModelArgs:
    """The model's arguments (typed and range-checked) and the mask and training settings that must fit them,
    without building the model. Returns the resolved arguments."""
    model_class = get_spec(cfg.model).model_class
    args = resolve_model_args(cfg.model, cfg.model_args)
    need = model_class.mask_patch_for(args)
    if need is not None and cfg.mask.patch != need:
        raise MinrError(
            f"mask.patch={cfg.mask.patch} but {cfg.model} masks whole {need}-px patches; "
            f"use --set mask.patch={need} (and the same for the MINR runs you compare with)"
        )
    if not model_class.renders_coordinates and (cfg.train.render_fraction < 1 or cfg.train.coord_noise != "none"):
        raise MinrError(
            f"train.render_fraction and train.coord_noise act on the INR's coordinates; {cfg.model} renders none "
            "(leave them at 1.0 and none for MAE)"
        )
    check_mask(cfg.mask, args.image_size)
    return args


def check_mask(mask: MaskConfig, size: int) -> None:
    """The mask grid must tile the `size`-px image, and `ratio` must mask some cells but not all of them."""
    patch = mask.patch
    if size % patch:
        raise MinrError(
            f"mask.patch={patch} does not divide the {size}-px image: the edge cells would be cut to "
            f"{size % patch} px and the masked fraction would not be mask.ratio; use one of {_divisors(size)}"
        )
    cells = (size // patch) ** 2
    if cells < 2:
        raise MinrError(
            f"mask.patch={patch} makes the {size}-px image a single cell, which is either masked or not whatever "
            f"mask.ratio says; use a smaller patch: {_divisors(size)}"
        )
    if not _masks_some_not_all(mask.kind, cells, mask.ratio):
        ok = [r / 1000 for r in range(1, 1000) if _masks_some_not_all(mask.kind, cells, r / 1000)]
        what = f"masks every one of the {cells} cells"
        if mask.kind != "bernoulli" and cells * mask.ratio < 0.5:
            what = f"asks for {cells * mask.ratio:.2g} of the {cells} cells, which the mask would round up to one"
        if mask.kind == "bernoulli":
            few = "masks on average less than one" if cells * mask.ratio < 1 else "leaves on average less than one"
            what = f"{few} of the {cells} cells{'' if cells * mask.ratio < 1 else ' visible'}"
        raise MinrError(
            f"mask.ratio={mask.ratio} {what} (mask.patch={patch} on the {size}-px image); "
            f"use a ratio in [{ok[0]}, {ok[-1]}]"
        )


def _masks_some_not_all(kind: str, cells: int, ratio: float) -> bool:
    """Whether a mask of `ratio` hides at least one cell and leaves one visible (bernoulli: in expectation). An
    exact-count mask rounds the count up (MAE's `L - int(L * (1 - ratio))`): below half a cell it would mask one
    cell for any ratio, many times the ratio asked for."""
    if kind == "bernoulli":
        return 1 <= cells * ratio <= cells - 1
    from minr.masking import num_masked

    return cells * ratio >= 0.5 and 1 <= num_masked(cells, ratio) <= cells - 1


def _divisors(size: int) -> str:
    return ", ".join(str(d) for d in range(1, size // 2 + 1) if size % d == 0)


def build_model(cfg: PretrainConfig) -> Encoder:
    """The model of a pretraining config, checked against its mask settings."""
    return get_spec(cfg.model).model_class(check_config(cfg))


def initial_checkpoint(cfg: PretrainConfig, path, *, git_sha: str = "init"):
    """A pretraining checkpoint of `cfg`'s model at its random initialisation (seed `cfg.train.seed`), what a run
    writes at step 0: a real checkpoint for whatever reads one before anything is trained. Returns the path."""
    from pathlib import Path

    import torch

    from minr.checkpoint import checkpoint_meta, save_checkpoint
    from minr.config import to_dict

    torch.manual_seed(cfg.train.seed)
    model, path = build_model(cfg), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = checkpoint_meta(
        "pretrain",
        model=cfg.model,
        model_args=cfg.model_args,
        family=model.family,
        config=to_dict(cfg),
        step=0,
        epoch=0,
        git_sha=git_sha,
    )
    save_checkpoint(path, model_state=model.state_dict(), meta=meta)
    return path


def pretrain_config(path: str, meta: dict[str, Any]) -> PretrainConfig:
    """The pretraining config a checkpoint was written under; refuses checkpoints that are not pretrained encoders."""
    if meta.get("kind", "pretrain") != "pretrain":
        raise MinrError(
            f"{path} is a {meta['kind']} checkpoint, not a pretrained encoder; pass the checkpoint that "
            "`minrctl pretrain` wrote (its run directory's checkpoint.safetensors)"
        )
    if not isinstance(meta.get("config"), dict):
        raise MinrError(f"{path} is a minr checkpoint but not of a pretrained encoder (no pretraining config)")
    try:
        return from_dict(PretrainConfig, meta["config"])
    except (MinrError, TypeError) as e:
        raise MinrError(f"{path}: its stored config is not valid ({e})") from None


def model_from_checkpoint(path: str, *, map_location: str | torch.device = "cpu", **model_args: Any):
    """Rebuild the model from the checkpoint alone (`model_args` such as drop_path_rate change only how it runs).
    Returns (model in eval mode, config, checkpoint meta)."""
    import torch

    from minr.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = pretrain_config(path, ckpt.meta)
    model = create_model(cfg.model, **{**cfg.model_args, **model_args}) if model_args else build_model(cfg)
    try:
        missing, unexpected = model.load_state_dict(ckpt.model_state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise MinrError(f"{path}: weights do not fit {cfg.model} ({_first_mismatch(str(e))})") from None
    if missing or unexpected:
        raise MinrError(f"{path}: weights do not fit {cfg.model} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise MinrError(
            f"{path}: weight {bad} holds NaN or infinite values (the run diverged); use an earlier checkpoint"
        )
    return model.to(map_location).eval(), cfg, ckpt.meta


def encoder_skeleton(path: str) -> tuple[Encoder, dict[str, Any]]:
    """The checkpoint's model without its weights (on the meta device, no memory, no file read beyond the header):
    enough for its family, resolution, channels, depth and width. Returns (model, checkpoint meta)."""
    import torch

    from minr.checkpoint import read_meta

    meta = read_meta(path)
    cfg = pretrain_config(path, meta)
    with torch.device("meta"):
        return create_model(cfg.model, **cfg.model_args), meta


# Where each checkpoint kind keeps the encoder's tensors ("model/" + prefix + the encoder's own names). A
# pretraining checkpoint holds the encoder itself; the packages that write the other kinds declare their layout
# (`register_encoder_prefix`), and the core does not know it.
_ENCODER_PREFIXES: dict[str, str] = {"pretrain": ""}


def register_encoder_prefix(kind: str, prefix: str) -> None:
    """Declare that checkpoints of `kind` keep the encoder under `prefix` (e.g. "encoder.")."""
    if _ENCODER_PREFIXES.get(kind, prefix) != prefix:
        raise ValueError(f"checkpoint kind {kind!r} already keeps its encoder under {_ENCODER_PREFIXES[kind]!r}")
    _ENCODER_PREFIXES[kind] = prefix


def encoder_prefix(kind: str) -> str:
    if kind not in _ENCODER_PREFIXES:
        raise MinrError(
            f"a {kind!r} checkpoint: no loaded package declares where its encoder lies (known kinds: "
            f"{', '.join(sorted(_ENCODER_PREFIXES))})"
        )
    return _ENCODER_PREFIXES[kind]


def verify_tensors(path: str, prefix: str | None = None) -> dict[str, Any]:
    """Check a checkpoint's encoder tensors against the architecture its metadata names, from the file's header
    and a skeleton on the meta device (nothing is loaded); the encoder's tensors are under `prefix` (default: its
    kind's registered prefix). Returns the metadata; a mismatch is a one-line error."""
    import torch

    from minr.checkpoint import read_meta

    meta = read_meta(path)
    kind = meta["kind"]
    args = meta.get("model_args", meta["config"].get("model_args", {}) if kind == "pretrain" else {})
    with torch.device("meta"):
        skeleton = create_model(meta["model"], **args)
    prefix = "model/" + (encoder_prefix(kind) if prefix is None else prefix)
    expected = {prefix + k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = _stored_shapes(path, prefix)
    if kind != "pretrain":  # fine-tuned models keep only the encoder parts they train with
        expected = {k: v for k, v in expected.items() if k in found or skeleton.is_encoder_parameter(k[len(prefix) :])}
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if kind != "pretrain":
        extra = []
    wrong = [k for k in expected.keys() & found.keys() if expected[k] != found[k]]
    if missing or extra or wrong:
        what = (
            f"tensor {wrong[0][6:]} is {list(found[wrong[0]])}, expected {list(expected[wrong[0]])}"
            if wrong
            else f"missing {[k[6:] for k in missing[:3]]}, unexpected {[k[6:] for k in extra[:3]]}"
        )
        raise MinrError(f"{path}: its tensors do not fit {meta['model']} ({what}); the file is damaged or mislabelled")
    return meta


def _stored_shapes(path: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the file's tensors under `prefix`, from the safetensors header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (safe_open is not a dict)
        return {k: tuple(f.get_slice(k).get_shape()) for k in names}


def _first_mismatch(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if "size mismatch" in ln]
    return lines[0].rstrip(".") if lines else message.splitlines()[0]
