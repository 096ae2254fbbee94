"""Exit codes of the `garage` CLIs, which conf/base.config maps to error strategies:
2 bad input (drop the sample), 3 not enough resources (retry with more, then drop the
sample with a warning), 1 internal error (stop the run). Fast: no data, no training."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from garage import cli
from garage.errors import EXIT_BAD_INPUT, EXIT_RESOURCES, GarageError, ResourceError


def _raiser(exc: BaseException) -> click.Command:
    @click.command("boom")
    def boom() -> None:
        raise exc

    return boom


def _invoke(monkeypatch, exc: BaseException, *args: str):
    monkeypatch.setattr(cli.LazyGroup, "get_command", lambda self, ctx, name: _raiser(exc))
    return CliRunner().invoke(cli.main, [*args, "boom"])


def _error_lines(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.strip()]


@pytest.mark.parametrize("exc, code, needle", [
    (GarageError("table x.csv is empty", "give a counts table"), 2, "Error: table x.csv is empty. Fix:"),
    (ResourceError("the GAT needs about 9.0 GB", "run on a larger node"), 3, "Error: the GAT needs about 9.0 GB"),
    (MemoryError(), 3, "Error: out of memory (MemoryError)"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 3, "Error: out of GPU memory"),
    (ValueError("a bug"), 1, "Internal error: ValueError: a bug"),
])
def test_cli_exit_code_and_one_error_line(monkeypatch, exc, code, needle):
    result = _invoke(monkeypatch, exc)
    assert result.exit_code == code, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(needle), lines
    assert "Traceback" not in result.output


def test_torch_cuda_out_of_memory_is_a_resource_failure(monkeypatch):
    torch = pytest.importorskip("torch")
    result = _invoke(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB"))
    assert result.exit_code == EXIT_RESOURCES and _error_lines(result)[0].startswith("Error: out of GPU memory")
    # a RuntimeError that is not about memory stays an internal error
    assert not cli.is_cuda_out_of_memory(RuntimeError("expected a cuda tensor"))


def test_debug_still_shows_the_traceback(monkeypatch):
    result = _invoke(monkeypatch, ResourceError("too big"), "--debug")
    assert isinstance(result.exception, ResourceError)


def test_resource_error_is_a_garage_error_with_its_own_code():
    assert issubclass(ResourceError, GarageError)  # `garage run` and callers drop it like bad input
    assert (GarageError.exit_code, ResourceError.exit_code) == (EXIT_BAD_INPUT, EXIT_RESOURCES) == (2, 3)


def test_preprocess_memory_preflight_is_a_resource_error():
    from garage.preprocess import PreprocessConfig, check_memory

    with pytest.raises(ResourceError, match="needs about"):
        check_memory(10**6, 2000, 10**8, PreprocessConfig(max_memory_gb=0.01))


def test_gat_memory_preflight_is_a_resource_error():
    torch = pytest.importorskip("torch")
    from garage.gat import GATConfig
    from garage.gat._train import check_memory

    with pytest.raises(ResourceError, match="the GAT needs about"):
        check_memory(10**6, 15 * 10**6, 50, GATConfig(max_memory_gb=1e-3), minibatch=False,
                     device=torch.device("cpu"))


def test_cuda_requested_without_a_gpu_is_a_resource_error():
    torch = pytest.importorskip("torch")
    from garage._utils import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ResourceError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_garage_run_exit_status():
    from garage.run import SampleResult, exit_status

    def results(*statuses):
        return [SampleResult(str(i), status=s) for i, s in enumerate(statuses)]

    assert exit_status(results("ok", "ok")) == 0
    assert exit_status(results("ok", "failed")) == 2
    assert exit_status(results("ok", "out-of-resources")) == 3
    assert exit_status(results("failed", "out-of-resources")) == 3  # a retry with more may help
    assert exit_status(results("out-of-resources", "internal-error")) == 1


SIGTERM_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
import click
from garage import cli
from garage._utils import atomic_path

out = Path(sys.argv[1])

@click.command("boom")
def boom():
    with atomic_path(out / "x.synthetic.h5ad") as tmp:
        tmp.write_text("half written")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)

cli.LazyGroup.get_command = lambda self, ctx, name: boom
cli.main(["boom"])
"""


def test_sigterm_exits_143_and_leaves_no_temporary_file(tmp_path):
    """A scheduler's SIGTERM (time limit, scancel, Nextflow abort) unwinds the stage: exit 143,
    one error line, and the temporary file of the output being written is gone."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == cli.EXIT_TERMINATED == 143, proc.stderr
    assert "Error: terminated (SIGTERM)" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_handler_is_restored_after_an_in_process_command(monkeypatch):
    """main() called in-process (a test runner, a notebook) hands SIGTERM back when it returns."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    result = _invoke(monkeypatch, GarageError("bad", "fix"))
    assert result.exit_code == EXIT_BAD_INPUT
    assert signal.getsignal(signal.SIGTERM) == before != cli._on_sigterm
