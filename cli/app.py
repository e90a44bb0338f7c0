"""The `minrctl` group, its error handling and the options shared by several commands."""

from __future__ import annotations

import click
from rich.console import Console

from minr.errors import MinrError

console = Console()


class MinrGroup(click.Group):
    """Turns a MinrError (a user mistake) into one line on stderr and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
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


def data_options(f):
    """--dataset, --data-root and --max-images, shared by the evaluation commands."""
    f = click.option("--max-images", type=int, default=None, help="Cap every split (stratified) for quick runs.")(f)
    f = click.option("--data-root", default=None, help="Where the dataset's files are.")(f)
    return click.option(
        "--dataset",
        default="fashion-mnist",
        show_default=True,
        help="fashion-mnist, digits, imagefolder:PATH, indoor67:PATH, celeba:PATH.",
    )(f)


def data_config(dataset: str, data_root: str | None, max_images: int | None):
    from minr.config import DataConfig

    return DataConfig(name=dataset, root=data_root, max_images=max_images)
