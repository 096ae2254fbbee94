"""The cuda path of the two GPU stages (marked ``gpu``: deselected by default, CI has no GPU).

Run on a machine with a CUDA GPU:  pytest -m gpu tests/python/test_cuda.py
(bench/device_check.sh runs it first on a lent GPU machine, then the scaling benchmark.)

What each test would catch: a tensor left on the host in a training or sampling step (a device
mismatch raises), noise or seed draws made on the CPU and copied every step, a model trained on
cuda that cannot be loaded and used on a CPU-only machine, --device auto not picking the GPU, and
non-reproducible draws for a fixed seed on one device.
"""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

from garage import constants as C

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
TINY = {"gan_steps": 30, "ae_steps": 20, "decoder_steps": 10, "hidden": 32, "checkpoint_every": 0, "patience": 0}


@pytest.fixture(scope="module")
def seeds_cuda(preprocessed_small, tmp_path_factory):
    from garage.gat import TEST_OVERRIDES, GATConfig, run_gat

    out = tmp_path_factory.mktemp("gat_cuda")
    return run_gat(preprocessed_small, out, "small", GATConfig(**TEST_OVERRIDES, seed=0), device="cuda")


@needs_cuda
def test_auto_picks_the_gpu():
    from garage._utils import resolve_device

    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"


@needs_cuda
def test_gat_on_cuda_marks_the_same_seed_quotas_as_on_cpu(seeds_cuda, preprocessed_small, tmp_path):
    from garage.gat import TEST_OVERRIDES, GATConfig, run_gat

    gpu = ad.read_h5ad(seeds_cuda["h5ad"])
    cpu = ad.read_h5ad(run_gat(preprocessed_small, tmp_path, "small", GATConfig(**TEST_OVERRIDES, seed=0),
                               device="cpu")["h5ad"])
    assert np.isfinite(gpu.obs[C.OBS_SCORE].to_numpy()).all()
    per_type = {k: gpu.obs.loc[gpu.obs[C.OBS_SEED], C.OBS_LABEL].astype(str).value_counts().to_dict()
                for k, gpu in (("gpu", gpu), ("cpu", cpu))}
    assert per_type["gpu"] == per_type["cpu"]  # quotas are decided by counts, not by the device
    # only train cells are seeds, whatever the device
    assert (gpu.obs.loc[gpu.obs[C.OBS_SEED], C.OBS_SPLIT] == C.SPLIT_TRAIN).all()


@needs_cuda
def test_gan_trains_and_generates_on_cuda_with_device_resident_draws(seeds_cuda, tmp_path, monkeypatch):
    from garage.gan import GANConfig, GarageGAN, run_gan
    from garage.gan import _train

    seen = []
    orig = _train.Trainer.__init__

    def spy(self, *a, **kw):
        orig(self, *a, **kw)
        seen.append((self.device.type, self.dgen.device.type, self._types.device.type))

    monkeypatch.setattr(_train.Trainer, "__init__", spy)
    res = run_gan(seeds_cuda["h5ad"], tmp_path, "g", GANConfig(**TINY, n_cells=300, seed=3), device="cuda")
    assert seen and all(s == ("cuda", "cuda", "cuda") for s in seen)  # noise/seed draws made on the GPU
    syn = ad.read_h5ad(res["h5ad"])
    assert syn.n_obs == 300 and np.array_equal(syn.X.data, np.rint(syn.X.data)) and (syn.X.data > 0).all()
    assert syn.obs[C.OBS_CELL_TYPE].nunique() > 1

    # a model trained on cuda loads and generates on a CPU-only machine; cuda draws are reproducible
    m = GarageGAN.load(res["model"])
    on_cpu = m.generate(n_cells=120, seed=5, device="cpu")
    assert on_cpu.n_obs == 120
    a = m.generate(n_cells=120, seed=5, device="cuda")
    b = GarageGAN.load(res["model"]).generate(n_cells=120, seed=5, device="cuda")
    assert (a.X != b.X).nnz == 0
    assert (a.obs[C.OBS_CELL_TYPE].astype(str).to_numpy() == on_cpu.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()).all()


@needs_cuda
def test_cli_stages_run_on_cuda(seeds_cuda, tmp_path):
    cmd = [sys.executable, "-m", "garage.cli", "gan", "--input", str(seeds_cuda["h5ad"]), "--outdir", str(tmp_path),
           "--prefix", "cli", "--device", "cuda", "--gan-steps", "20", "--ae-steps", "10", "--n-cells", "50"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ad.read_h5ad(tmp_path / "cli.synthetic.h5ad").n_obs == 50
