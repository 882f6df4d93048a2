"""``transferkit push``: a bundle to the Hugging Face Hub (or a local folder), with its model card as README."""
from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli.common import console, examples


def register(app: typer.Typer) -> None:
    app.command("push", epilog=examples(
        'transferkit push runs/fmnist my-org/fmnist-lite0 --private'))(push_command)


def push_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `transferkit fit`."),
    repo: str = typer.Argument(..., help="Hub model repo (ORG/NAME or hf:ORG/NAME), or a local folder "
                                         "(a path starting with /, ./, ../, ~ or file:)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo as private."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Local folder only: replace an existing non-empty folder."),
    message: str | None = typer.Option(None, "--message", "-m", help="Hub commit message."),
) -> None:
    """Push BUNDLE to REPO with a README.md model card (Hub front matter + report.md).

    Load it back with transferkit.export.hub.load_from_hub("ORG/NAME").
    """
    from transferkit.export.hub import is_local_target, push_bundle

    where = push_bundle(bundle, repo, private=private, overwrite=overwrite, commit_message=message)
    kind = "folder" if is_local_target(repo) else "Hub repo"
    console.print(f"pushed [bold]{bundle}[/bold] to {kind} [bold]{where}[/bold]", highlight=False)
