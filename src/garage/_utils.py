"""Small shared helpers: seeding, device choice, atomic writes, versions.

No global state: every function takes what it needs as arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from .errors import GarageError, ResourceError

logger = logging.getLogger(__name__)

DeviceChoice = Literal["cpu", "cuda", "auto"]


def set_seed(seed: int, *, deterministic_cuda: bool = True) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        if deterministic_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(choice: str) -> "torch.device":  # noqa: F821
    """Turn ``cpu|cuda|auto`` into a torch device; fail clearly if cuda is missing."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ResourceError(
                "--device cuda was requested but no CUDA GPU is visible to torch",
                "run with --device cpu (or auto), or use a CUDA build of torch on a GPU node "
                "(Nextflow: -profile gpu)",
            )
        return torch.device("cuda")
    if choice == "cpu":
        return torch.device("cpu")
    raise GarageError(f"unknown device {choice!r}", "use cpu, cuda or auto")


def set_threads(threads: int | None) -> None:
    """Limit torch intra-op threads (None leaves the default)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(max(1, int(threads)))


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to *final*; rename it into place on success.

    On any exception the temporary file is removed, so a crash never leaves a
    half-written output under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=".tmp" + "".join(final.suffixes[-1:]), dir=final.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the output the usual umask-based mode
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_h5ad_atomic(adata, path: Path) -> Path:
    """Write an AnnData atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    return Path(path)


def write_text_atomic(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_writable_dir(outdir: Path) -> Path:
    """Create *outdir* if needed and fail clearly if it cannot be written."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GarageError(
            f"cannot create output directory {outdir}: {exc.strerror}",
            "choose a writable --outdir",
        ) from None
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise GarageError(
            f"output directory {outdir} is not writable", "choose a writable --outdir"
        )
    return outdir


def versions() -> dict[str, str]:
    """Versions of the packages that shape results, recorded in every output."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {"python": sys.version.split()[0]}
    for pkg in (
        "garage-sc",
        "torch",
        "torch-geometric",
        "scanpy",
        "anndata",
        "numpy",
        "scikit-learn",
        "pot",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def progress(iterable=None, **kwargs):
    """A tqdm progress bar that switches itself off when stderr is not a TTY."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", None)  # None: auto-disable on non-TTY
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
