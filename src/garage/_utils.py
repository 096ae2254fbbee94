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


def clear_stale(finals) -> list[Path]:
    """Remove what a killed earlier run left next to *finals*: the temporary files of
    ``atomic_path`` (``.NAME.*.tmp*``) and staging files (``.STEM.staged*``).  Only these
    dot-names, which no finished output uses, are touched.  SIGTERM cleans up on its own
    (the CLI turns it into an exit that runs the cleanup); SIGKILL cannot, hence this."""
    import glob

    gone = []
    for final in map(Path, finals):
        name = glob.escape(final.name)  # a prefix with [, * or ? must not match other samples' files
        staged = glob.escape(f".{final.name.removesuffix(final.suffix)}.staged")
        # the output's own temp file, the staging file, and the staging file's temp file
        suffix = glob.escape(final.suffix)
        for pat in (f".{name}.*.tmp*", f"{staged}{suffix}", f".{staged}{suffix}.*.tmp*"):
            for p in final.parent.glob(pat):
                try:
                    p.unlink()
                    gone.append(p)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # not ours to remove (permissions): say so, go on
                    logger.warning("could not remove %s left by an earlier run: %s", p.name, exc)
    if gone:
        logger.warning("removed %d file(s) left by an interrupted earlier run: %s", len(gone),
                       ", ".join(sorted(p.name for p in gone)))
    return gone


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


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LogProgress:
    """Progress as log lines, for stderr that is not a terminal (Nextflow's .command.err, a
    SLURM log), where tqdm's in-place bar would be one long line of carriage returns: a line
    at every 10 % (at most one per LOG_MIN_S) and a heartbeat every LOG_HEARTBEAT_S, each
    with the elapsed time and an ETA.  The subset of tqdm's interface GARAGE uses."""

    LOG_MIN_S = 5.0
    LOG_HEARTBEAT_S = 120.0

    def __init__(self, iterable=None, total=None, initial=0, desc="", unit="it", leave=True,
                 clock=None, **_ignored):
        import time

        self._clock = clock or time.monotonic
        self.iterable, self.desc, self.unit = iterable, desc or "progress", unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self._start_n = total, initial, initial
        self._t0 = self._last = self._clock()
        self._next_pct = (int(100 * initial / total) // 10 + 1) * 10 if total else None
        self.postfix = ""
        self.lines: list[str] = []  # what was logged (tests read it)

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def _line(self) -> str:
        el = self._clock() - self._t0
        done = self.n - self._start_n
        if self.total:
            pct = 100.0 * self.n / self.total
            counts = "" if self.unit == "%" else f" ({self.n:,}/{self.total:,} {self.unit})"
            msg = f"{self.desc}: {pct:3.0f}%{counts}, {_fmt_s(el)} elapsed"
            if done > 0 and self.n < self.total * (1 - 1e-9):
                msg += f", ETA {_fmt_s(el / done * (self.total - self.n))}"
        else:
            msg = f"{self.desc}: {self.n:,} {self.unit}, {_fmt_s(el)} elapsed"
        return msg + (f" [{self.postfix}]" if self.postfix else "")

    def _emit(self) -> None:
        line = self._line()
        self.lines.append(line)
        logger.info("%s", line)
        self._last = self._clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if self.total and self._next_pct is not None and 100.0 * self.n / self.total >= self._next_pct - 1e-6:
            # the last line always, unless the whole job took under LOG_MIN_S (no noise for quick reads)
            finished = self.n >= self.total * (1 - 1e-9)  # fractional updates (StepProgress) may round
            if now - self._last >= self.LOG_MIN_S or (finished and now - self._t0 >= self.LOG_MIN_S):
                self._emit()
            self._next_pct = (int(round(100 * self.n / self.total, 6)) // 10 + 1) * 10
        elif now - self._last >= self.LOG_HEARTBEAT_S:
            self._emit()

    def close(self) -> None:
        pass


class StepProgress:
    """Progress over a stage's named steps (preprocess, evaluate), each weighted by its share of
    the stage's time as measured in the benchmarks, so the ETA is not a plain step count.

    Steps that cannot report progress themselves (a PCA, a kNN search, a classifier fit) get a
    heartbeat every *heartbeat_s* seconds while they run: a log line on a non-terminal stderr,
    a refreshed bar on a terminal.  :meth:`finish` moves to 100 % once the stage succeeded (steps
    it skipped, such as seed privacy without seeds, count as done); without it the bar stops where
    it was.  Each step is also logged as it starts and with its duration, as before."""

    HEARTBEAT_S = 60.0

    def __init__(self, desc: str, weights: dict[str, float], *, heartbeat_s: float | None = None,
                 log=None) -> None:
        import threading
        import time

        total = float(sum(weights.values()))
        if not total > 0:
            raise ValueError("step weights must sum to > 0")
        self.desc, self._time = desc, time.monotonic
        self.weights = {k: 100.0 * v / total for k, v in weights.items()}
        self.heartbeat_s = self.HEARTBEAT_S if heartbeat_s is None else float(heartbeat_s)
        self.log = log or logger
        self.bar = progress(total=100, desc=desc, unit="%", leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self.done = 0.0
        self.t0 = self._time()
        self.lines: list[str] = []  # heartbeat lines (tests read them)
        self._lock = threading.Lock()
        self._beat = None  # (stop event, thread) of the running step's heartbeat
        self._current = None  # (key, label, start, announce) of the running step

    def _eta(self) -> str:
        el = self._time() - self.t0
        if self.done <= 0 or self.done >= 100:
            return ""
        return f", ETA {_fmt_s(el / self.done * (100 - self.done))}"

    @contextlib.contextmanager
    def step(self, key: str, label: str | None = None):
        """Run one step: log its start, heartbeat while it runs, log its duration, advance."""
        self.begin(key, label)
        try:
            yield
        finally:
            self._stop_beat()
        self.end()

    def begin(self, key: str, label: str | None = None, *, announce: bool = True) -> None:
        """Start step *key* (its heartbeat with it); *announce*: log its start (and, at
        :meth:`end`, its duration) here, unless the caller logs them itself."""
        import threading
        import time

        if key not in self.weights:
            raise KeyError(f"{self.desc}: no weight for step {key!r}")
        self._stop_beat()
        label = label or key
        self._current = (key, label, time.perf_counter(), announce)
        if announce:
            self.log.info("%s ...", label)
        stop = threading.Event()
        t_step = self._current[2]

        def beat():
            while not stop.wait(self.heartbeat_s):
                with self._lock:
                    line = (f"{self.desc}: {label} still running, {_fmt_s(time.perf_counter() - t_step)} "
                            f"in this step; {self.done:.0f}% of the stage done, "
                            f"{_fmt_s(self._time() - self.t0)} elapsed{self._eta()}")
                    self.lines.append(line)
                if isinstance(self.bar, LogProgress):
                    self.log.info("%s", line)
                else:
                    self.bar.refresh()

        thread = threading.Thread(target=beat, name=f"{self.desc} heartbeat", daemon=True)
        self._beat = (stop, thread)
        thread.start()

    def _stop_beat(self) -> None:
        if self._beat is not None:
            stop, thread = self._beat
            stop.set()
            thread.join()
            self._beat = None

    def end(self) -> None:
        """Finish the current step: stop its heartbeat, log its duration, advance by its weight."""
        import time

        self._stop_beat()
        if self._current is None:
            return
        key, label, t0, announce = self._current
        self._current = None
        if announce:
            self.log.info("%s: %.1f s", label, time.perf_counter() - t0)
        self.advance(self.weights[key])

    def advance(self, pct: float) -> None:
        with self._lock:
            pct = min(pct, 100.0 - self.done)
            self.done += pct
        self.bar.update(pct)

    def close(self) -> None:
        """The stage failed (or is abandoned): stop the heartbeat and the bar where they are."""
        self._stop_beat()
        self._current = None
        self.bar.close()

    def finish(self) -> None:
        """The stage succeeded: skipped steps count as done."""
        self.end()
        if self.done < 100.0 - 1e-6:
            self.advance(100.0 - self.done)
        self.bar.close()

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """A stage run as ``with StepProgress(...)``: finished on success; on any exception
        closed where it stands (no heartbeat outlives it, no 100 % line)."""
        if exc_type is None:
            self.finish()
        else:
            self.close()
        return False


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal; on any other stderr (a pipeline's log file) progress lines with
    an ETA through the logger (LogProgress)."""
    from tqdm.auto import tqdm

    if kwargs.get("disable") is True:
        return tqdm(iterable, **kwargs)
    if not _stderr_is_tty():
        return LogProgress(iterable, **kwargs)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def budget_left_bytes(max_memory_gb: float) -> tuple[int, int]:
    """(bytes of a ``--max-memory-gb`` budget this process can still use, bytes it already holds):
    the budget covers the whole process (e.g. Nextflow's task.memory), while the stages' estimates
    count only what their next step adds.  At least 1, so a spent budget is still a budget."""
    held = process_rss_bytes()
    return max(1, int(max_memory_gb * 2**30) - held), held


def process_rss_bytes() -> int:
    """Resident memory of this process now (VmRSS; 0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
