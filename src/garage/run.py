"""``garage run``: every stage for every sample of a samplesheet, in-process.

This is the embedded default for one machine (no Nextflow).  It writes the
same files, in the same layout, as the Nextflow pipeline publishes:
``OUTDIR/{preprocess,gat,gan,evaluate,multiqc}/``.  A bad sample fails alone
with its message, and so does a sample that does not fit the machine (a
:class:`~garage.errors.ResourceError`, ``MemoryError`` or CUDA out of memory:
status ``out-of-resources``); the others complete; the exit status says whether
all did.  A run stopped by SIGTERM or Ctrl-C still writes
``pipeline_info/garage_run_summary.tsv`` (the stopped sample ``terminated``, the
ones after it ``not-run``) and exits 143 or 130.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import constants as C
from .errors import (CUDA_OUT_OF_MEMORY, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_RESOURCES,
                     OUT_OF_MEMORY, GarageError, ResourceError, is_cuda_out_of_memory)

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sample", "counts")
OPTIONAL_COLUMNS = ("label_key", "condition_key", "layer")
SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STAGES = ("preprocess", "gat", "gan", "evaluate")
#: options of the params file's ``gan`` section that are ``run_gan`` arguments, not GANConfig
#: fields (``garage gan --no-provenance`` / ``--shareable-model``), with their defaults
GAN_RUN_OPTIONS: dict[str, bool] = {"provenance": True, "shareable_model": False}


@dataclass(frozen=True)
class Sample:
    sample: str
    counts: Path
    label_key: str | None = None
    layer: str | None = None
    condition_key: str | None = None


def read_samplesheet(path: Path) -> list[Sample]:
    """Parse and validate a CSV samplesheet; every problem is a :class:`GarageError`."""
    path = Path(path)
    if not path.is_file():
        raise GarageError(f"samplesheet {path} does not exist", "pass --input with a CSV samplesheet")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise GarageError(f"samplesheet {path.name} is not a readable CSV ({exc})", "save it as UTF-8 CSV") from None
    if not rows:
        raise GarageError(f"samplesheet {path.name} has no samples", "add a header `sample,counts,label_key` and one row per sample")
    header = [h.strip() if h else h for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise GarageError(
            f"samplesheet {path.name} is missing column(s) {missing} (found {list(header)})",
            "use the header `sample,counts,label_key`",
        )
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise GarageError(
            f"samplesheet {path.name} has unknown column(s) {unknown}",
            f"allowed columns: {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}",
        )
    samples: list[Sample] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        sid = row["sample"]
        if not SAMPLE_ID.match(sid):
            raise GarageError(
                f"samplesheet line {i}: sample id {sid!r} is empty or has spaces/special characters",
                "use letters, digits, '.', '_' or '-'",
            )
        if sid in seen:
            raise GarageError(f"samplesheet line {i}: duplicate sample id {sid!r}", "give every sample a unique id")
        seen.add(sid)
        if not row["counts"]:
            raise GarageError(f"samplesheet line {i}: empty 'counts' for sample {sid!r}", "give the path of the counts file")
        counts = Path(row["counts"]).expanduser()
        if not counts.is_absolute():
            # relative paths resolve against the samplesheet's folder first, then the cwd
            cand = path.parent / counts
            counts = cand if cand.exists() else counts
        if not counts.exists():
            raise GarageError(
                f"samplesheet line {i}: counts file {row['counts']!r} for sample {sid!r} does not exist",
                "fix the path (relative paths resolve against the samplesheet's folder)",
            )
        samples.append(
            Sample(sid, counts.resolve(), row.get("label_key") or None, row.get("layer") or None,
                   row.get("condition_key") or None)
        )
    return samples


def test_samplesheet() -> list[Sample]:
    """The bundled real datasets as a two-sample sheet (``--profile test``)."""
    from .datasets import DATASETS, dataset_path

    return [
        Sample(name, dataset_path(name), key)
        for name, (_, key) in DATASETS.items()
    ]


def _load_params(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    text = Path(path).read_text()
    try:
        if Path(path).suffix.lower() in (".yml", ".yaml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml/json both raise their own types
        raise GarageError(f"could not parse params file {Path(path).name}: {exc}", "fix its JSON/YAML syntax") from None
    if not isinstance(data, dict) or not set(data) <= set(STAGES):
        raise GarageError(
            f"params file must map stage names {list(STAGES)} to option dicts (got {list(data) if isinstance(data, dict) else type(data).__name__})",
            'e.g. {"gan": {"gan_steps": 2000}}',
        )
    return data


def _gan_run_options(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
    """Split the ``gan`` section into GANConfig fields and ``run_gan`` options (GAN_RUN_OPTIONS).

    ``provenance: false`` skips the PRIVATE ``PREFIX.provenance.tsv`` (evaluate then runs
    without it: no ``seed_nn_share``); ``shareable_model: true`` writes a generator without
    seed codes, seed names or training-cell digests (and this run's cells are unseeded).
    """
    overrides = dict(overrides)
    options: dict[str, bool] = {}
    for name, default in GAN_RUN_OPTIONS.items():
        value = overrides.pop(name, default)
        if not isinstance(value, bool):
            raise GarageError(f"gan option {name!r} in params must be true or false (got {value!r})",
                              f'e.g. {{"gan": {{"{name}": {str(not default).lower()}}}}}')
        options[name] = value
    return overrides, options


def _number(value: Any, integer: bool, stage: str, name: str, default: Any) -> int | float:
    """One numeric option's value as a number (an int option's only if it is whole)."""
    kind = "a whole number" if integer else "a number"
    fix = (f"write e.g. {name}: {default!r}" if isinstance(default, (int, float)) and not isinstance(default, bool)
           else f"write {kind} or omit {name}")
    bad = GarageError(f"{stage} option {name!r} in params must be {kind} (got {value!r})", fix)
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if not isinstance(value, (int, float)):
        raise bad
    if integer:
        if not float(value).is_integer():
            raise bad
        return int(value)
    return value


#: annotations (strings: the config modules use postponed evaluation) of the numeric options
_SCALARS = {"float": False, "float | None": False, "int": True, "int | None": True}


def _numbers(cls, overrides: dict[str, Any], stage: str) -> dict[str, Any]:
    """Numeric options as numbers. YAML 1.1 (PyYAML) reads ``2e-4`` or ``2e3`` (no dot) as a string,
    which a user means as the number; a value that is no number (or a true/false) is refused by name."""
    out = dict(overrides)
    for f in dataclasses.fields(cls):
        v, kind = out.get(f.name), str(f.type)
        if f.name not in out or v is None:  # None: validate() decides whether the option may be unset
            continue
        if kind in _SCALARS:
            out[f.name] = _number(v, _SCALARS[kind], stage, f.name, f.default)
        elif kind == "tuple[float, ...]":
            if not isinstance(v, (list, tuple)):
                raise GarageError(f"{stage} option {f.name!r} in params must be a list of numbers (got {v!r})",
                                  f"write e.g. {f.name}: {list(f.default)!r}")
            out[f.name] = tuple(_number(x, False, stage, f.name, None) for x in v)
    return out


def _config(cls, overrides: dict[str, Any], stage: str, seed: int | None = None, also_valid=()):
    names = {f.name for f in dataclasses.fields(cls)}
    if seed is not None and "seed" in names:
        overrides = {"seed": seed} | overrides
    bad = sorted(set(overrides) - names)
    if bad:
        raise GarageError(f"unknown {stage} option(s) {bad} in params", f"valid: {sorted(names | set(also_valid))}")
    cfg = cls(**_numbers(cls, overrides, stage))
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _reuse(resume: bool, outputs: dict[str, Path]) -> dict[str, Path] | None:
    """With --resume, a stage whose outputs all exist is not run again.

    Outputs are only ever renamed into place when complete, so existing means finished.
    """
    if resume and all(p.is_file() for p in outputs.values()):
        logger.info("reusing finished outputs: %s", ", ".join(p.name for p in outputs.values()))
        return outputs
    return None


@dataclass
class SampleResult:
    sample: str
    status: str = "ok"  # ok | running (only while its stages run) | failed (bad input) | out-of-resources | internal-error | terminated | not-run
    message: str = ""
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)


def run_samples(
    samples: list[Sample],
    outdir: Path,
    *,
    profile: str | None = None,
    params_file: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    resume: bool = False,
    report: bool = True,
) -> list[SampleResult]:
    """Run every stage for every sample; return one result per sample."""
    from . import evaluate as ev
    from . import gan, gat
    from .preprocess import PreprocessConfig, run_preprocess
    from ._utils import check_writable_dir

    outdir = check_writable_dir(Path(outdir))
    params = _load_params(params_file)
    test = profile == "test"
    stage_over = {
        "gat": ({**gat.TEST_OVERRIDES} if test else {}) | params.get("gat", {}),
        "gan": ({**gan.TEST_OVERRIDES} if test else {}) | params.get("gan", {}),
        "evaluate": ({**ev.TEST_OVERRIDES} if test else {}) | params.get("evaluate", {}),
    }
    gat_cfg = _config(gat.GATConfig, stage_over["gat"], "gat", seed)
    gan_over, gan_opts = _gan_run_options(stage_over["gan"])
    gan_cfg = _config(gan.GANConfig, gan_over, "gan", seed, also_valid=GAN_RUN_OPTIONS)
    ev_cfg = _config(ev.EvaluateConfig, stage_over["evaluate"], "evaluate", seed)

    def stages(s: Sample) -> dict[str, str]:
        """Preprocess, GAT, GAN and evaluate for one sample; return its outputs' paths."""
        pp_over = {"label_key": s.label_key, "layer": s.layer, "condition_key": s.condition_key} \
            | params.get("preprocess", {})
        pp_cfg = _config(PreprocessConfig, pp_over, "preprocess", seed)
        pp = _reuse(resume, {"h5ad": outdir / "preprocess" / f"{s.sample}{C.SUFFIX_PREPROCESSED}"}) \
            or run_preprocess(s.counts, outdir / "preprocess", s.sample, pp_cfg)
        pp = pp["h5ad"]
        logger.info("[%s] preprocess done", s.sample)
        d = outdir / "gat"
        g = _reuse(resume, {"h5ad": d / f"{s.sample}{C.SUFFIX_SEEDS}", "model": d / f"{s.sample}{C.SUFFIX_GAT_MODEL}",
                            "log": d / f"{s.sample}{C.SUFFIX_GAT_LOG}"}) \
            or gat.run_gat(pp, d, s.sample, gat_cfg, device=device, threads=threads, resume=resume)
        logger.info("[%s] gat done", s.sample)
        d = outdir / "gan"
        gan_outputs = {"h5ad": d / f"{s.sample}{C.SUFFIX_SYNTHETIC}", "model": d / f"{s.sample}{C.SUFFIX_GENERATOR}",
                       "log": d / f"{s.sample}{C.SUFFIX_GAN_LOG}"}
        if gan_opts["provenance"]:
            gan_outputs["provenance"] = d / f"{s.sample}{C.SUFFIX_PROVENANCE}"
        gn = _reuse(resume, gan_outputs) \
            or gan.run_gan(g["h5ad"], d, s.sample, gan_cfg, device=device, threads=threads, resume=resume,
                           **gan_opts)
        logger.info("[%s] gan done", s.sample)
        # the seeds and the (private) provenance make the privacy metrics seed-aware (no
        # provenance with gan.provenance: false: evaluate then runs without it)
        e = ev.run_evaluate(pp, gn["h5ad"], outdir / "evaluate", s.sample, ev_cfg,
                            seeds=g["h5ad"], provenance=gn.get("provenance"))
        logger.info("[%s] evaluate done", s.sample)
        outputs = {k: str(v) for d in (g, gn, e) for k, v in d.items() if not isinstance(v, (list, tuple))}
        return outputs | {"preprocessed": str(pp)}

    results: list[SampleResult] = []  # the last one is "running" until its iteration has ended
    try:
        for n, s in enumerate(samples, start=1):
            t0 = time.perf_counter()
            res = SampleResult(s.sample, "running")
            results.append(res)
            logger.info("[%d/%d] sample %s", n, len(samples), s.sample)
            status, message = "ok", ""
            try:
                res.outputs = stages(s)
            except ResourceError as exc:  # memory / GPU: this sample does not fit, the next may
                status, message = "out-of-resources", str(exc)
                logger.error("[%s] not enough resources: %s", s.sample, exc)
            except GarageError as exc:
                status, message = "failed", str(exc)
                logger.error("[%s] %s", s.sample, exc)
            except MemoryError:
                status, message = "out-of-resources", OUT_OF_MEMORY
                logger.error("[%s] %s", s.sample, OUT_OF_MEMORY)
            except Exception as exc:  # one sample's crash must not stop the batch
                if is_cuda_out_of_memory(exc):
                    status, message = "out-of-resources", CUDA_OUT_OF_MEMORY
                    logger.error("[%s] %s", s.sample, CUDA_OUT_OF_MEMORY)
                else:
                    status = "internal-error"
                    message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    logger.exception("[%s] internal error", s.sample)
            # a stop before this line (even inside a handler above) leaves the row "running": terminated
            res.seconds, res.message, res.status = round(time.perf_counter() - t0, 1), message, status

        if report and any(r.status == "ok" for r in results):
            from .multiqc import run_report

            try:
                trained = gan_cfg.for_output(bool(gan_opts.get("shareable_model")))  # critic_path as trained
                report_params = {"profile": profile or "", "seed": seed, "device": device,
                                 "gat": dataclasses.asdict(gat_cfg), "gan": trained.to_dict() | gan_opts,
                                 "evaluate": ev.params_of(ev_cfg)}
                html = run_report(outdir / "evaluate", outdir / "multiqc", params=report_params)
                logger.info("MultiQC report: %s", html)
            except Exception as exc:  # the report must not hide finished samples
                logger.error("MultiQC report failed: %s", exc)
    except (SystemExit, KeyboardInterrupt) as exc:  # SIGTERM (exit 143) or Ctrl-C (130): the batch stops,
        # and the summary still says which samples finished, which one stopped, which never ran
        rows = list(results)
        if rows and rows[-1].status == "running":
            rows[-1].status, rows[-1].message = "terminated", _stop_message(exc)
            rows[-1].seconds = round(time.perf_counter() - t0, 1)
        rows += [SampleResult(x.sample, "not-run") for x in samples[len(rows):]]
        try:
            _write_summary(rows, outdir)
        except Exception as err:  # keep the stop's own exit code (Nextflow retries 130-145, not 1)
            logger.error("could not write the run summary: %s", err)
        raise
    _write_summary(results, outdir)
    return results


def _stop_message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C, exit 130)"
    code = getattr(exc, "code", None)
    return "terminated by SIGTERM (exit 143)" if code == 143 else f"stopped (exit {code})"


def exit_status(results: list[SampleResult]) -> int:
    """0 all completed; else 1 (an internal error) > 3 (out of resources) > 2 (bad input).

    ``terminated`` / ``not-run`` never reach here: a stopped batch re-raises its SystemExit or
    KeyboardInterrupt (exit 143 or 130) after writing the summary."""
    statuses = {r.status for r in results}
    if statuses <= {"ok"}:
        return 0
    if "internal-error" in statuses:
        return EXIT_INTERNAL
    return EXIT_RESOURCES if "out-of-resources" in statuses else EXIT_BAD_INPUT


def _one_field(text: str) -> str:
    """A message as one TSV field: tabs and line breaks become spaces."""
    return re.sub(r"[\t\r\n]+", " ", str(text))


def _write_summary(results: list[SampleResult], outdir: Path) -> Path:
    from ._utils import write_text_atomic

    info = outdir / "pipeline_info"
    info.mkdir(parents=True, exist_ok=True)
    lines = ["sample\tstatus\tseconds\tmessage"]
    lines += [f"{r.sample}\t{r.status}\t{r.seconds}\t{_one_field(r.message)}" for r in results]
    return write_text_atomic("\n".join(lines) + "\n", info / "garage_run_summary.tsv")
