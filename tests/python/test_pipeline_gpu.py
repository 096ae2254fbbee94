"""GPU settings that a parse cannot check (see ../shared/TOOLING.md, "GPUs"):

* -profile gpu is the one switch: params.use_gpu drives the image and --device, the profile
  adds the accelerator, the container's GPU options and maxForks, and --use_gpu without the
  profile stops the run (gpuSwitchError, run with the Groovy runtime);
* on the local executor, Nextflow before 26.10 gives no task its own GPU, so the gpu profile
  caps GAT/GAN at params.gpu_max_forks tasks at once; the slurm and awsbatch profiles lift
  the cap whatever the order of the profiles (Nextflow's selector priority, with profiles
  applied in either order: definition order in the v1 parser, command-line order in the
  strict one);
* docs/usage.md says so, and gives the exact lines a site config must keep.
"""

from __future__ import annotations

import itertools
import re

import pytest
from test_pipeline import (
    REPO,
    UTILS_NF,
    Setting,
    call_nf_functions,
    default_params,
    eval_closures,
    nf_classpath,  # noqa: F401  (fixture)
    process_settings,
    resolve_directive,
    schema_params,
    strip_comments,
)

GPU_PROCESSES = ("GARAGE_GAT", "GARAGE_GAN")


def _gpu_labelled_processes() -> set[str]:
    found = set()
    for f in (REPO / "modules").rglob("main.nf"):
        text = strip_comments(f.read_text())
        m = re.search(r"(?m)^process\s+(\w+)", text)
        if m and re.search(r"(?m)^\s*label\s+'process_gpu'", text):
            found.add(m.group(1))
    return found


def _max_forks_settings(cp: str, profiles: tuple[str, ...]) -> dict[str, Setting | None]:
    """The maxForks setting Nextflow picks for each GPU process with these profiles applied
    in this order (later settings of the same rank win)."""
    settings: list[Setting] = list(process_settings(cp, "conf/base.config"))
    for profile in profiles:
        settings += process_settings(cp, "nextflow.config", profile=profile)
    return {process: resolve_directive(settings, process, "maxForks") for process in GPU_PROCESSES}


def _max_forks(cp: str, combos: list[tuple[tuple[str, ...], dict]]) -> list[dict[str, int]]:
    """maxForks of each GPU process for each (profiles, params); param expressions are
    evaluated with Groovy, all in one JVM."""
    found, cases = [], []
    for profiles, params in combos:
        row = {}
        for process, s in _max_forks_settings(cp, profiles).items():
            if s is None:
                row[process] = 0
            elif s.closure:
                pytest.fail(f"maxForks must be static (Nextflow reads it once per process): {s.source}")
            elif s.value is not None:
                row[process] = int(s.value)
            else:  # an expression of params, evaluated as Nextflow does when it parses the config
                row[process] = ("eval", len(cases))
                cases.append({"source": "{ " + s.source + " }", "params": params})
        found.append(row)
    values = eval_closures(cp, cases) if cases else []
    return [{p: int(values[v[1]]) if isinstance(v, tuple) else v for p, v in row.items()} for row in found]


def test_gpu_processes_are_the_labelled_ones():
    assert _gpu_labelled_processes() == set(GPU_PROCESSES)


def test_gpu_max_forks_caps_local_gpu_tasks(nf_classpath):  # noqa: F811
    combos, want = [], []
    for forks, expect in ((1, 1), ("1", 1), ("3", 3), (0, 0)):  # strict syntax: '3' from the command line
        params = default_params() | {"gpu_max_forks": forks}
        for profiles in (("gpu",), ("docker", "gpu"), ("gpu", "docker"), ("singularity", "gpu"), ("test", "gpu")):
            combos.append((profiles, params))
            want.append({p: expect for p in GPU_PROCESSES})
    got = _max_forks(nf_classpath, combos)
    for (profiles, params), g, w in zip(combos, got, want):
        assert g == w, f"-profile {','.join(profiles)} --gpu_max_forks {params['gpu_max_forks']!r}: {g}"
    assert default_params()["gpu_max_forks"] == 1 and schema_params()["gpu_max_forks"]["default"] == 1


def test_schedulers_are_never_throttled_whatever_the_profile_order(nf_classpath):  # noqa: F811
    params = default_params()
    orders = [order for scheduler in ("slurm", "awsbatch") for extra in ((), ("singularity",), ("docker",))
              for order in itertools.permutations((scheduler, "gpu", *extra))]
    orders.append(("docker",))  # without the gpu profile nothing is capped either
    for order, got in zip(orders, _max_forks(nf_classpath, [(order, params) for order in orders])):
        assert got == {p: 0 for p in GPU_PROCESSES}, f"-profile {','.join(order)}: {got}"


def test_every_executor_profile_lifts_the_local_gpu_cap(nf_classpath):  # noqa: F811
    """A profile that sends tasks to a scheduler must reset maxForks with a withName selector
    that covers every process_gpu process (a withLabel one would lose to the gpu profile's
    when the gpu profile comes later)."""
    from test_pipeline import config_settings

    profiles = {e["path"][1] for e in config_settings(nf_classpath, "nextflow.config") if e["path"][:1] == ["profiles"]}
    executors = {p for p in profiles
                 if any(s.path == ["executor"] and s.value not in (None, "local")
                        for s in process_settings(nf_classpath, "nextflow.config", profile=p))}
    assert executors == {"slurm", "awsbatch"}
    for p in executors:
        resets = [s for s in process_settings(nf_classpath, "nextflow.config", profile=p) if s.path[-1] == "maxForks"]
        assert resets and all(s.path[0].startswith("withName:") and s.value == 0 for s in resets), p


def test_gpu_switch_is_the_profile(nf_classpath):  # noqa: F811
    """--use_gpu alone would give the CUDA image and --device cuda without the GPU request and
    the container's GPU options: the run stops at start instead."""
    got = call_nf_functions(nf_classpath, ["gpuSwitchError"], """
        return [
            gpuSwitchError(true, 'docker'), gpuSwitchError(true, 'test,docker'), gpuSwitchError(true, null),
            gpuSwitchError(true, 'docker,gpu'), gpuSwitchError(true, 'slurm, singularity, gpu'),
            gpuSwitchError(false, 'docker'), gpuSwitchError(false, 'standard'),
            gpuSwitchError(true, 'docker,gpux'),
        ]""")
    assert all(msg and "-profile gpu" in msg for msg in got[:3]), got
    assert got[3:7] == [None, None, None, None]
    assert got[7] and "-profile gpu" in got[7]
    # main.nf passes the coerced param, and the initialisation stops on the error
    main = strip_comments((REPO / "main.nf").read_text())
    assert "params.use_gpu.toString().toBoolean()," in main
    init = strip_comments((REPO / UTILS_NF).read_text())
    assert re.search(r"gpuSwitchError\(use_gpu, workflow\.profile\)", init) and "error(gpu_error)" in init
    # what the profile adds exists only under the profile
    base = process_settings(nf_classpath, "conf/base.config")
    top = process_settings(nf_classpath, "nextflow.config")
    for directive in ("accelerator", "containerOptions"):
        assert not any(s.path[-1] == directive for s in base + top), directive
    gpu = process_settings(nf_classpath, "nextflow.config", profile="gpu")
    assert {s.path[-1] for s in gpu} == {"accelerator", "containerOptions", "maxForks"}
    spec = schema_params()["use_gpu"]
    assert spec.get("hidden") is True and "-profile gpu" in spec["description"]
    assert "stops" in spec["description"]


def test_usage_documents_gpu_limits_and_site_configs():
    usage = (REPO / "docs/usage.md").read_text()
    config = (REPO / "nextflow.config").read_text()
    # the false claim is gone: before 26.10 the local executor gives no task its own GPU
    for text in (usage, config):
        assert "local executor (which gives each task its own" not in text
        assert "local\n    //                      executor (which hands each task its own" not in text
    assert "--gpu_max_forks" in usage and "export CUDA_VISIBLE_DEVICES=" in usage and "26.10" in usage
    # the exact lines a site config must keep
    assert "singularity.envWhitelist = 'MY_VAR,CUDA_VISIBLE_DEVICES'" in usage
    assert "'--account=my_lab --gres=gpu:1'" in usage
    # the per-process ext.args example follows -profile gpu instead of hard-coding cuda
    assert '"--device cuda --gan-steps' not in usage
    readme = (REPO / "README.md").read_text()
    assert "-profile slurm,singularity,gpu" in readme and "# HPC + GPU" not in readme
