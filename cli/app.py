"""The `minrctl` group, its error handling, and the options shared by several commands (declared once here).

Commands build their config dataclass from the parsed options by field name (`config_from`), so an option is
written once: its declaration. Options left at None take the config's own default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.core import ParameterSource

from minr.config import MAX_INT
from minr.errors import MinrError
from minr.progress import console

__all__ = ["console", "main"]


class OneLineUsageError(click.UsageError):
    """click's usage error (unknown option, bad choice, missing value), shown on one line with where to look."""

    def show(self, file=None) -> None:
        where = f" (see `{self.ctx.command_path} --help`)" if self.ctx else ""
        click.echo(f"Error: {self.format_message()}{where}", err=True)


def _one_line_usage(e: click.UsageError) -> click.UsageError:
    if isinstance(e, click.exceptions.NoArgsIsHelpError | OneLineUsageError):
        return e
    return OneLineUsageError(e.format_message(), ctx=e.ctx)


class MinrGroup(click.Group):
    """Turns a MinrError (a user mistake) into one line on stderr and exit code 2, without a traceback; click's own
    usage errors are one line too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _one_line_usage(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line_usage(e) from None
        except MinrError as e:
            click.echo(f"Error: {one_line(e)}", err=True)
            ctx.exit(2)


def one_line(e: MinrError) -> str:
    """The message; for an error re-raised from a data-loader worker, the original message, not the wrapper's."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith("Caught MinrError"):
        return lines[-1].split("MinrError: ", 1)[-1]
    return lines[0] if lines else e.__class__.__name__


@click.group(cls=MinrGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Masked INR pretraining (TransINR, GINR) against MAE, and the evaluation of their encoders."""


# -- shared options -------------------------------------------------------------------------------------------
class LazyHelpOption(click.Option):
    """An option whose help text is a function, called only when the help is shown: texts that come from the model
    registry or the fine-tuning configs would otherwise import torch for every command, `--help` included."""

    def __init__(self, *args: Any, help: str | Callable[[], str] | None = None, **kwargs: Any) -> None:  # noqa: A002
        self._help_from = help if callable(help) else None
        super().__init__(*args, help=None if callable(help) else help, **kwargs)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self._help_from is not None:
            self.help, self._help_from = self._help_from(), None
        return super().get_help_record(ctx)


def lazy_option(*decls: str, help: Callable[[], str], **kwargs: Any) -> Callable:  # noqa: A002
    """`click.option` with a help text computed when `--help` is shown (see `LazyHelpOption`)."""
    return click.option(*decls, cls=LazyHelpOption, help=help, **kwargs)


def kinds_help(suffix: str = "") -> Callable[[], str]:
    """The `--kind` help text (every model class's feature kinds), as a function for `lazy_option`."""

    def text() -> str:
        from probes.features import kinds_help as registry_kinds

        return registry_kinds() + suffix

    return text


def _stack(*decorators: Callable) -> Callable:
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def data_options(default: str | None = "fashion-mnist") -> Callable:
    """--dataset, --data-root and --max-images."""
    return _stack(
        click.option(
            "--dataset",
            default=default,
            show_default=default is not None,
            help="fashion-mnist, digits, photos, imagefolder:PATH, indoor67:PATH, celeba:PATH "
            "(segmentation: fashion-scenes:PATH, ade20k:PATH, seg:PATH).",
        ),
        click.option("--data-root", default=None, help="Where the dataset's files are (Fashion-MNIST's IDX files)."),
        click.option("--max-images", type=click.IntRange(min=1), default=None, help="Cap every split (stratified)."),
    )


ckpts_option = click.option(
    "--ckpt", "ckpts", multiple=True, required=True, help="A pretrained checkpoint; repeat to compare."
)
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
SEED = click.IntRange(0, MAX_INT)  # what torch and numpy generators take


def run_options(*, resume: bool) -> Callable:
    """--out, --device, --quiet and (for commands that train) --resume."""
    options = [
        click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory."),
        device_option,
        quiet_option,
    ]
    if resume:
        options.append(click.option("--resume", is_flag=True, help="Continue interrupted runs in --out."))
    return _stack(*options)


def data_config(dataset: str, data_root: str | None, max_images: int | None):
    from minr.config import DataConfig

    return DataConfig(name=dataset, root=data_root, max_images=max_images)


def config_from(cls: type, params: dict[str, Any], **values: Any) -> Any:
    """Build the config dataclass `cls` from the options whose names are its fields (None: the field's default),
    tuples for tuple fields; `values` fill or override fields the options do not name directly."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in params.items() if k in names and v is not None}
    kwargs = {
        k: tuple(v) if typing.get_origin(hints[k]) is tuple and isinstance(v, list) else v for k, v in kwargs.items()
    }
    return cls(**{**kwargs, **values})


def refuse_inapplicable(ctx: click.Context, applicable: Iterable[str], what: str) -> None:
    """A one-line error for an option given on the command line that `what` (e.g. "--task segmentation") ignores."""
    allowed = set(applicable)
    for param in ctx.command.params:
        if param.name not in allowed and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
            raise MinrError(f"{param.opts[0]} does not apply to {what}; leave it out")


def field_default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def floats(text: str | None, option: str) -> tuple[float, ...]:
    """ "0,0.25,0.5" -> (0.0, 0.25, 0.5), or a one-line error naming the option."""
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise MinrError(f"{option}: expected comma-separated numbers like 0,0.25,0.5, got {text!r}") from None
