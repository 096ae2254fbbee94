"""The ``garage`` command: one subcommand per stage.

Subcommands live in their own modules and are imported only when invoked, so
``garage --version`` and ``garage --help`` never import torch.  The CLI parses
and validates options, builds a config, calls the library, and turns errors into
one ``Error:`` line and an exit code:

- 2: a :class:`~garage.errors.GarageError`, bad input or options;
- 3: not enough resources, a :class:`~garage.errors.ResourceError` (memory
  pre-flight check, no visible GPU for ``--device cuda``), a Python
  ``MemoryError`` or a CUDA out-of-memory error: a retry with more memory (or
  on a GPU node) may succeed;
- 1: anything else, an internal error (the full traceback with ``--debug``);
- 143 (128 + 15): stopped by SIGTERM (a scheduler's time limit, ``scancel``, an
  aborted Nextflow run).  The signal is turned into an exit that unwinds the
  stage, so its temporary and staging files are removed and nothing is
  half-written; Nextflow's error strategy retries 130-145.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys

import click

from .. import __version__
from ..errors import (CUDA_OUT_OF_MEMORY, EXIT_INTERNAL, EXIT_RESOURCES, OUT_OF_MEMORY,
                      is_cuda_out_of_memory)

# name -> "module:attribute"; each stage owns its module
COMMANDS: dict[str, str] = {
    "preprocess": "garage.cli.preprocess:preprocess",
    "gat": "garage.cli.gat:gat",
    "gan": "garage.cli.gan:gan",
    "generate": "garage.cli.gan:generate",
    "evaluate": "garage.cli.evaluate:evaluate",
    "run": "garage.cli.run:run",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        return getattr(importlib.import_module(mod), attr)

    def invoke(self, ctx):
        from ..errors import GarageError

        debug = ctx.params.get("debug", False)
        try:
            return super().invoke(ctx)
        except GarageError as exc:  # exit 2 (bad input) or 3 (ResourceError)
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # bad option value, missing file, ...: one line
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)
        except MemoryError:
            if debug:
                raise
            click.echo(f"Error: {OUT_OF_MEMORY}", err=True)
            ctx.exit(EXIT_RESOURCES)
        except Exception as exc:  # internal error: one line unless --debug
            if debug:
                raise
            if is_cuda_out_of_memory(exc):
                click.echo(f"Error: {CUDA_OUT_OF_MEMORY}", err=True)
                ctx.exit(EXIT_RESOURCES)
            msg = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(
                f"Internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback "
                "and report it)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


EXIT_TERMINATED = 143


def _on_sigterm(signum, frame):  # noqa: ARG001
    # a second SIGTERM (SLURM signals every process of the step, Nextflow forwards TERM to the
    # task's tree) must not interrupt the cleanup this one starts; SIGKILL stays the backstop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # os.write, not click.echo: a signal that lands inside a buffered stderr write would make
    # a second buffered write raise (reentrant call), turning exit 143 into an internal error
    with contextlib.suppress(OSError):  # stderr's reader may be gone already: still exit 143
        os.write(2, b"Error: terminated (SIGTERM); the stage stops and removes its temporary files\n")
    raise SystemExit(EXIT_TERMINATED)


def install_sigterm_exit() -> None:
    """SIGTERM -> ``SystemExit(143)`` in the main thread while a command runs: Python's default
    action would kill the process without running ``finally`` blocks, leaving temporary files
    behind.  The previous handler comes back when the command ends (a host process that calls
    ``main`` in-process, e.g. a test runner, keeps its own SIGTERM behaviour)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and previous is not None:  # None: a handler set from C, cannot be restored
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("numba", "matplotlib", "h5py", "fontTools", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="garage", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(debug: bool, verbose: int, quiet: bool) -> None:
    """GARAGE: synthetic single-cell RNA-seq that keeps rare cell types.

    Stages: preprocess -> gat (seed selection) -> gan (generation) -> evaluate;
    `garage run` does all of them for a samplesheet, in-process.
    """
    import warnings

    install_sigterm_exit()
    configure_logging(-1 if quiet else verbose)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*")  # library chatter stays out of logs


__all__ = ["main", "COMMANDS", "is_cuda_out_of_memory"]
