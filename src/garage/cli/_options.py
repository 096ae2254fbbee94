"""Options shared by several stage commands (one definition, many users)."""

from __future__ import annotations

from pathlib import Path

import click

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
existing_path = click.Path(exists=True, path_type=Path)


def prefix_option(f):
    return click.option(
        "--prefix", required=True, help="Sample id; outputs are named PREFIX.<kind>."
    )(f)


def outdir_option(f):
    return click.option(
        "--outdir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="Folder for the outputs (created if needed).",
    )(f)


def seed_option(f):
    return click.option(
        "--seed", type=click.IntRange(min=0), default=0, show_default=True,
        help="One seed for every random source.",
    )(f)


def device_option(f):
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Torch device. auto: cuda when torch sees a GPU, else cpu; cuda fails clearly "
             "when no GPU is visible.",
    )(f)


def threads_option(f):
    return click.option(
        "--threads", type=click.IntRange(min=1), default=None,
        help="Torch CPU threads (default: torch's choice).",
    )(f)
