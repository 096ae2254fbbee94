"""The project's exception types: bad input, and not enough resources.

The CLI turns a :class:`GarageError` into a single ``Error: ...`` line on
stderr and exit code 2 (bad input: rerunning the same sample cannot help).
A :class:`ResourceError` (and a Python ``MemoryError`` or a CUDA out-of-memory
error) becomes one ``Error: ...`` line and exit code 3: the input may be fine
but the task did not get enough memory, or no GPU, so a retry with more
resources may succeed. Anything else is an internal error (exit code 1).
"""

from __future__ import annotations

import sys

#: exit status of the ``garage`` CLIs (conf/base.config maps each to an error strategy)
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_RESOURCES = 3


class GarageError(Exception):
    """Bad input or options. The message says what is wrong and how to fix it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        msg = problem if fix is None else f"{problem}. Fix: {fix}"
        super().__init__(msg.replace("\n", " "))


class ResourceError(GarageError):
    """Not enough resources (memory, GPU memory, no visible GPU) for a valid input.

    A subclass of :class:`GarageError`, so code that drops a bad sample drops
    this one too; the CLI exits with 3 instead of 2 so that a scheduler can
    retry the task with more resources.
    """

    exit_code = EXIT_RESOURCES


#: the one-line messages of a Python MemoryError and a CUDA out-of-memory error (CLI and `garage run`)
OUT_OF_MEMORY = ("out of memory (MemoryError). Fix: run on a node with more memory, or lower "
                 "--batch-size / use --minibatch")
CUDA_OUT_OF_MEMORY = ("out of GPU memory (CUDA out of memory). Fix: run on a GPU with more memory, "
                      "or lower --batch-size, or use --device cpu")


def is_cuda_out_of_memory(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` (and the plain RuntimeError older torch raised)."""
    torch = sys.modules.get("torch")  # never import torch here: only a loaded torch can raise it
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith("CUDA out of memory")


__all__ = ["GarageError", "ResourceError", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_RESOURCES",
           "OUT_OF_MEMORY", "CUDA_OUT_OF_MEMORY", "is_cuda_out_of_memory"]
