"""MultiQC module for GARAGE: fidelity, rare-type and privacy metrics of synthetic cells.

Reads ``PREFIX.garage_metrics.json``, ``PREFIX.per_type.tsv``,
``PREFIX.per_condition.tsv`` and the two PNG pictures written by ``garage evaluate``
(schemas in docs/developer.md and docs/metrics.md).  Registered in pyproject.toml as
``multiqc.modules.v1: garage``; the search patterns (``garage/metrics``,
``garage/per_type``, ``garage/per_condition``, ``garage/umap``,
``garage/per_type_plot``) come from :mod:`garage.multiqc.hooks`.

Every value is shown with its 95% interval next to its control; a difference inside
the intervals reads "no difference" (``garage.evaluate._intervals.verdict``).
"""

from __future__ import annotations

import base64
import fnmatch
import html
import logging
import math
import os
from typing import Any

from multiqc.base_module import BaseMultiqcModule, ModuleNoSamplesFound
from multiqc.plots import bargraph, table

from ..constants import (
    SUFFIX_METRICS,
    SUFFIX_PER_CONDITION,
    SUFFIX_PER_TYPE,
    SUFFIX_PER_TYPE_PLOT,
    SUFFIX_UMAP,
)
from ..evaluate._intervals import differs, verdict
from ._metrics import GENERAL_STATS_METRICS, GROUP_TITLES, METRIC_SPECS, spec_for
from ._parse import (
    METRIC_NAMES,
    PRIVACY_METRICS,
    MetricsParseError,
    SampleMetrics,
    parse_metrics_json,
    parse_per_condition_tsv,
    parse_per_type_tsv,
)
from ._report import (
    MODULE_ANCHOR,
    SECTION_AGREEMENT,
    SECTION_COMPOSITION,
    SECTION_CONDITIONS,
    SECTION_DIAGNOSIS,
    SECTION_METRICS,
    SECTION_PICTURES,
    SECTION_PRIVACY,
)
from .hooks import SP_METRICS, SP_PER_CONDITION, SP_PER_TYPE, SP_PER_TYPE_PLOT, SP_UMAP

log = logging.getLogger(__name__)

#: Separator between sample and cell type in per-type bar names and data-file keys.
SEP = " · "

_BETTER_TEXT = {
    "higher": "higher is better",
    "lower": "lower is better",
    "closer to 0.5": "closer to 0.5 is better",
    "closer to 1": "closer to 1 is better",
    "closer to control": "closer to the control is better",
    "zero": "zero is best",
}


def _sig(v: Any) -> str:
    """Four significant digits; integers stay integers."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if float(v).is_integer() and abs(v) < 1e6:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return str(v)


def _as_text(v: Any) -> str:
    """Table ``format`` for pre-formatted cells.

    MultiQC >= 1.35 keeps them as text (``parse_numeric: False``); older versions parse
    them back into numbers, which then get four significant digits.
    """
    return v if isinstance(v, str) else _sig(v)


def _pconfig(kind: str, **options: Any) -> dict[str, Any]:
    """Plot options minus those the installed MultiQC does not know (strict mode rejects them)."""
    try:
        if kind == "table":
            from multiqc.plots.table_object import TableConfig as cls
        else:
            try:
                from multiqc.plots.bargraph import BarPlotConfig as cls
            except ImportError:  # MultiQC < 1.27 keeps it with the plotly code
                from multiqc.plots.plotly.bar import BarPlotConfig as cls
        known = set(cls.model_fields)
    except Exception:  # pragma: no cover - unknown MultiQC layout: pass everything
        return options
    return {k: v for k, v in options.items() if k in known}


class MultiqcModule(BaseMultiqcModule):
    """GARAGE synthetic-data evaluation (``garage evaluate`` outputs)."""

    def __init__(self) -> None:
        super().__init__(
            name="GARAGE",
            anchor=MODULE_ANCHOR,
            info=(
                "Graph-attention seeded GAN for synthetic single-cell RNA-seq that keeps rare cell types. "
                "Each metric compares synthetic cells with held-out real cells, next to a control: "
                "the same metric for real training cells against real held-out cells, i.e. the best a "
                "perfect generator could reach."
            ),
        )

        self._metrics: dict[str, SampleMetrics] = {}
        self._per_type: dict[str, list[dict[str, Any]]] = {}
        self._per_condition: dict[str, list[dict[str, Any]]] = {}
        self._images: dict[str, dict[str, str]] = {}  # sample -> kind -> path
        # (folder, file prefix) -> sample name, so PREFIX.per_type.tsv joins its JSON
        prefix_to_sample: dict[tuple[str, str], str] = {}

        for f in self.find_log_files(SP_METRICS):
            self._read_metrics(f, prefix_to_sample)
        for f in self.find_log_files(SP_PER_TYPE):
            self._read_per_type(f, prefix_to_sample)
        for f in self.find_log_files(SP_PER_CONDITION):
            self._read_per_condition(f, prefix_to_sample)
        for sp, kind, suffix in ((SP_UMAP, "umap", SUFFIX_UMAP),
                                 (SP_PER_TYPE_PLOT, "per_type", SUFFIX_PER_TYPE_PLOT)):
            for f in self._find_pictures(sp, suffix):
                self._read_image(f, kind, suffix, prefix_to_sample)

        self._metrics = self.ignore_samples(self._metrics)
        self._per_type = self.ignore_samples(self._per_type)
        self._per_condition = self.ignore_samples(self._per_condition)
        self._images = self.ignore_samples(self._images)
        samples = sorted(set(self._metrics) | set(self._per_type))
        if not samples:
            raise ModuleNoSamplesFound
        log.info(f"Found {len(self._metrics)} metrics files and {len(self._per_type)} per-type tables")

        self._add_versions()
        self._write_data_files()
        self._add_general_stats()
        self._add_metrics_section()
        self._add_composition_section()
        self._add_agreement_section()
        self._add_diagnosis_section()
        self._add_privacy_section()
        self._add_conditions_section()
        self._add_pictures_section()

    # ------------------------------------------------------------------ parsing
    def _sample_from_prefix(self, f: dict[str, Any], suffix: str) -> tuple[str, str]:
        fn = f["fn"]
        prefix = fn[: -len(suffix)] if fn.endswith(suffix) else fn
        return prefix, self.clean_s_name(prefix, f)

    def _read_metrics(self, f: dict[str, Any], prefix_to_sample: dict[tuple[str, str], str]) -> None:
        prefix, fallback = self._sample_from_prefix(f, SUFFIX_METRICS)
        try:
            parsed = parse_metrics_json(f["f"])
        except MetricsParseError as exc:
            log.warning(f"{fallback}: skipping {f['root']}/{f['fn']}: {exc}")
            return
        s_name = self.clean_s_name(parsed.sample, f) if parsed.sample else fallback
        if parsed.problems:
            log.warning(f"{s_name}: incomplete metrics file {f['fn']}: " + "; ".join(parsed.problems))
        if s_name in self._metrics:
            log.warning(f"{s_name}: duplicate sample name, {f['root']}/{f['fn']} replaces an earlier file")
        self._metrics[s_name] = parsed
        prefix_to_sample[(f["root"], prefix)] = s_name
        self.add_data_source(f, s_name=s_name, section="metrics")

    def _sample_for(self, f: dict[str, Any], suffix: str,
                    prefix_to_sample: dict[tuple[str, str], str]) -> str:
        """The sample a side file (TSV, PNG) of PREFIX belongs to: its metrics file's sample."""
        prefix, fallback = self._sample_from_prefix(f, suffix)
        s_name = prefix_to_sample.get((f["root"], prefix))
        if s_name is None:
            # Nextflow stages every file in its own folder ("?/*"): join on the prefix alone
            # when exactly one metrics file has it
            names = {n for (_, p), n in prefix_to_sample.items() if p == prefix}
            s_name = names.pop() if len(names) == 1 else fallback
        return s_name

    def _read_per_condition(self, f: dict[str, Any],
                            prefix_to_sample: dict[tuple[str, str], str]) -> None:
        s_name = self._sample_for(f, SUFFIX_PER_CONDITION, prefix_to_sample)
        try:
            rows, problems = parse_per_condition_tsv(f["f"])
        except MetricsParseError as exc:
            log.warning(f"{s_name}: skipping {f['root']}/{f['fn']}: {exc}")
            return
        if problems:
            log.warning(f"{s_name}: incomplete per-condition table {f['fn']}: " + "; ".join(problems))
        self._per_condition[s_name] = rows
        self.add_data_source(f, s_name=s_name, section="per_condition")

    def _find_pictures(self, sp: str, suffix: str) -> list[dict[str, Any]]:
        """PNG files of one kind.

        MultiQC's file search skips images unless ``ignore_images: false`` (the default
        keeps it from reading binary files for every module).  The search pattern is
        used when images are searched; otherwise the analysis folders are scanned for
        the suffix directly, which finds the files wherever ``garage evaluate`` or
        Nextflow's staging put them.
        """
        from multiqc import config

        found = {os.path.join(f["root"], f["fn"]): f for f in self.find_log_files(sp, filecontents=False)}
        if getattr(config, "ignore_images", True):
            pattern = (config.sp.get(sp) or {}).get("fn", f"*{suffix}")
            ignore_dirs = list(getattr(config, "fn_ignore_dirs", []) or [])
            out_dir = os.path.abspath(getattr(config, "output_dir", "") or "")
            for d in getattr(config, "analysis_dir", []) or []:
                roots = [d] if os.path.isdir(d) else []
                for root in roots:
                    for cur, dirs, files in os.walk(root, followlinks=True):
                        dirs[:] = [x for x in dirs if not any(fnmatch.fnmatch(x, p) for p in ignore_dirs)
                                   and os.path.abspath(os.path.join(cur, x)) != out_dir]
                        for fn in files:
                            if fnmatch.fnmatch(fn, pattern):
                                found.setdefault(os.path.join(cur, fn), {"root": cur, "fn": fn, "sp_key": sp})
        return [found[k] for k in sorted(found)]

    def _read_image(self, f: dict[str, Any], kind: str, suffix: str,
                    prefix_to_sample: dict[tuple[str, str], str]) -> None:
        s_name = self._sample_for(f, suffix, prefix_to_sample)
        path = os.path.join(f["root"], f["fn"])
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
        except OSError as exc:
            log.warning(f"{s_name}: cannot read {path}: {exc}")
            return
        if head != b"\x89PNG\r\n\x1a\n":
            log.warning(f"{s_name}: {f['fn']} is not a PNG file; skipped")
            return
        self._images.setdefault(s_name, {})[kind] = path
        self.add_data_source(s_name=s_name, path=path, section=f"{kind}_picture")

    def _read_per_type(self, f: dict[str, Any], prefix_to_sample: dict[tuple[str, str], str]) -> None:
        s_name = self._sample_for(f, SUFFIX_PER_TYPE, prefix_to_sample)
        try:
            rows, problems = parse_per_type_tsv(f["f"])
        except MetricsParseError as exc:
            log.warning(f"{s_name}: skipping {f['root']}/{f['fn']}: {exc}")
            return
        if problems:
            log.warning(f"{s_name}: incomplete per-type table {f['fn']}: " + "; ".join(problems))
        if s_name in self._per_type:
            log.warning(f"{s_name}: duplicate sample name, {f['root']}/{f['fn']} replaces an earlier file")
        self._per_type[s_name] = rows
        self.add_data_source(f, s_name=s_name, section="per_type")

    # ------------------------------------------------------------ helpers
    def _values(self, name: str, field: str = "value") -> dict[str, float]:
        out: dict[str, float] = {}
        for s, m in self._metrics.items():
            mv = m.metrics.get(name)
            v = getattr(mv, field) if mv is not None else None
            if v is not None:
                out[s] = v
        return out

    def _better(self, name: str) -> str:
        for m in self._metrics.values():
            mv = m.metrics.get(name)
            if mv is not None and mv.better:
                return mv.better
        return spec_for(name).better

    def _decimals(self, name: str) -> int:
        spec = spec_for(name)
        vals = list(self._values(name).values()) + list(self._values(name, "control").values())
        if spec.decimals == 0 and any(not float(v).is_integer() for v in vals):
            return 4  # a fraction where a count was expected
        return spec.decimals

    def _control_text(self, name: str) -> str:
        spec = spec_for(name)
        controls = sorted(self._values(name, "control").values())
        d = self._decimals(name)
        if not controls:
            return f"Control ({spec.control}): not computed."
        lo, hi = controls[0], controls[-1]
        if math.isclose(lo, hi, rel_tol=0, abs_tol=10 ** -(d + 1)):
            return f"Control ({spec.control}): {lo:.{d}f}."
        return f"Control ({spec.control}): {lo:.{d}f} to {hi:.{d}f} across samples."

    def _description(self, name: str) -> str:
        spec = spec_for(name)
        better = _BETTER_TEXT.get(self._better(name), self._better(name))
        return f"{spec.description}; {better}. {self._control_text(name)}"

    def _column(self, name: str, *, control: bool = False, **extra: Any) -> dict[str, Any]:
        spec = spec_for(name)
        col: dict[str, Any] = {
            "title": spec.control_title if control else spec.title,
            "description": (
                f"Control for {spec.title}: {spec.control}." if control else self._description(name)
            ),
            "format": "{:,.%df}" % self._decimals(name),
            "scale": spec.scale,
        }
        if spec.vmin is not None:
            col["min"] = spec.vmin
        if spec.vmax is not None:
            col["max"] = spec.vmax
        col.update(extra)
        return col

    def _type_label(self, s_name: str, row: dict[str, Any]) -> str:
        label = f"{s_name}{SEP}{row['cell_type']}"
        rare = row.get("is_rare")
        if rare is None:  # fall back on the JSON's list of rare types
            m = self._metrics.get(s_name)
            rare = m is not None and row["cell_type"] in m.rare_types
        return f"{label} (rare)" if rare else label

    # ------------------------------------------------------------ outputs
    def _add_versions(self) -> None:
        for s_name, m in self._metrics.items():
            versions = dict(m.versions)
            if m.garage_version and "garage-sc" not in versions and "garage" not in versions:
                versions["garage-sc"] = m.garage_version
            for software, version in versions.items():
                self.add_software_version(version, sample=s_name, software_name=software)

    def _write_data_files(self) -> None:
        if self._metrics:
            rows: dict[str, dict[str, Any]] = {}
            for s_name, m in self._metrics.items():
                row: dict[str, Any] = {f"n_{k}": v for k, v in m.n_cells.items()}
                for name, mv in m.metrics.items():
                    row[name] = mv.value
                    row[f"{name}_std"] = mv.std
                    row[f"{name}_control"] = mv.control
                    row[f"{name}_control_std"] = mv.control_std
                    for key in ("ci_low", "ci_high", "control_ci_low", "control_ci_high"):
                        row[f"{name}_{key}"] = getattr(mv, key)
                    row[f"{name}_n_real"] = mv.n_real
                    row[f"{name}_verdict"] = verdict(mv)
                row["rare_types"] = ";".join(m.rare_types)
                row["missing_types"] = ";".join(m.missing_types)
                row["privacy_ok"] = m.privacy_ok
                row["privacy_reasons"] = " | ".join(m.privacy_reasons)
                row["privacy_unchecked_types"] = ";".join(m.privacy_unchecked_types)
                rows[s_name] = row
            self.write_data_file(rows, "multiqc_garage_metrics")
        if self._per_condition:
            pc: dict[str, dict[str, Any]] = {}
            for s_name, crow in self._per_condition.items():
                for r in crow:
                    key = SEP.join(x for x in (s_name, r["condition"], r.get("reference") or "",
                                               r.get("cell_type") or "", r["metric"]) if x)
                    pc[key] = {"sample": s_name, **r}
            self.write_data_file(pc, "multiqc_garage_per_condition")
        if self._per_type:
            per_type: dict[str, dict[str, Any]] = {}
            for s_name, type_rows in self._per_type.items():
                for r in type_rows:
                    per_type[f"{s_name}{SEP}{r['cell_type']}"] = {"sample": s_name, **r}
            self.write_data_file(per_type, "multiqc_garage_per_type")

    def _add_general_stats(self) -> None:
        if not self._metrics:
            return
        data: dict[str, dict[str, Any]] = {s: {} for s in self._metrics}
        headers: dict[str, dict[str, Any]] = {}
        for name in GENERAL_STATS_METRICS:
            values = self._values(name)
            if not values:
                continue
            for s, v in values.items():
                data[s][name] = v
            headers[name] = self._column(name)
            controls = self._values(name, "control")
            for s, v in controls.items():
                data[s][f"{name}_control"] = v
            if controls:
                headers[f"{name}_control"] = self._column(name, control=True, hidden=True)
        n_syn = {s: m.n_cells["synthetic"] for s, m in self._metrics.items() if "synthetic" in m.n_cells}
        for s, v in n_syn.items():
            data[s]["n_synthetic"] = v
        if n_syn:
            headers["n_synthetic"] = {
                "title": "Synthetic cells",
                "description": "Number of synthetic cells evaluated",
                "format": "{:,.0f}",
                "scale": "Blues",
                "hidden": True,
            }
        self.general_stats_addcols(data, headers)

    def _fmt(self, name: str, v: float | None, signed: bool = False) -> str | None:
        if v is None:
            return None
        d = self._decimals(name)
        if d > 0 and v != 0:  # tiny values (an MMD, an SD) keep two significant digits
            d = max(d, 1 - math.floor(math.log10(abs(v))))
        text = f"{v:,.{d}f}"
        if signed and v > 0:
            text = "+" + text
        return text

    def _interval(self, name: str, lo: float | None, hi: float | None) -> str | None:
        if lo is None or hi is None:
            return None
        return f"{self._fmt(name, lo)} – {self._fmt(name, hi)}"

    def _add_metrics_section(self) -> None:
        if not self._metrics:
            return
        extra = sorted({n for m in self._metrics.values() for n in m.metrics} - set(METRIC_NAMES))
        data: dict[str, dict[str, Any]] = {}
        for s_name, m in self._metrics.items():
            for name in list(METRIC_NAMES) + extra:
                mv = m.metrics.get(name)
                if mv is None or (mv.value is None and mv.control is None):
                    continue  # e.g. seed metrics without --seeds
                spec = spec_for(name)
                diff = None
                if mv.value is not None and mv.control is not None:
                    diff = mv.value - mv.control
                data[f"{s_name}{SEP}{spec.title}"] = {
                    "set": GROUP_TITLES.get(spec.group, spec.group),
                    "synthetic": self._fmt(name, mv.value) or "n/a",
                    "synthetic_ci": self._interval(name, mv.ci_low, mv.ci_high),
                    "synthetic_std": self._fmt(name, mv.std) if mv.std else None,
                    "control": self._fmt(name, mv.control) or "n/a",
                    "control_ci": self._interval(name, mv.control_ci_low, mv.control_ci_high),
                    "control_std": self._fmt(name, mv.control_std) if mv.control_std else None,
                    "difference": self._fmt(name, diff, signed=True),
                    "verdict": verdict(mv),
                    "n_real": None if mv.n_real is None else f"{int(mv.n_real):,}",
                    "better": mv.better or spec.better,
                }
        if not data:
            return
        no_ci = all(row["synthetic_ci"] is None and row["control_ci"] is None for row in data.values())
        headers: dict[str, dict[str, Any]] = {
            "set": {"title": "Set", "description": "Group of metrics", "scale": False},
            "synthetic": {
                "title": "Synthetic", "description": "Synthetic vs real held-out cells (mean over draws)",
                "scale": False, "format": _as_text,
            },
            "synthetic_ci": {
                "title": "95% CI", "description": "95% interval of the synthetic value, from resampling "
                "the real cells (see docs/metrics.md)", "scale": False, "hidden": no_ci,
                "format": _as_text,
            },
            "synthetic_std": {
                "title": "± SD", "description": "Standard deviation of the synthetic value over draws "
                "(its resampling standard error)", "scale": False, "hidden": True, "format": _as_text,
            },
            "control": {
                "title": "Control",
                "description": "The same metric for real train vs real held-out cells: what a perfect "
                "generator would reach",
                "scale": False,
                "format": _as_text,
            },
            "control_ci": {
                "title": "95% CI ", "description": "95% interval of the control", "scale": False,
                "hidden": no_ci, "format": _as_text,
            },
            "control_std": {
                "title": "± SD ", "description": "Standard deviation of the control over draws",
                "scale": False, "hidden": True, "format": _as_text,
            },
            "difference": {
                "title": "Synthetic − control",
                "description": "Synthetic value minus control; near 0 means as good as real data",
                "scale": False,
                "format": _as_text,
            },
            "verdict": {
                "title": "Verdict",
                "description": "'no difference' when the two 95% intervals overlap (a difference "
                "inside the intervals is no difference); otherwise better or worse than the control",
                "scale": False,
            },
            "n_real": {
                "title": "Real cells", "description": "Real held-out cells one draw rests on (for "
                "rare-type metrics: held-out cells of the rare types)", "scale": False,
                "format": _as_text,
            },
            "better": {"title": "Better", "description": "Which direction is better", "scale": False},
        }
        self.add_section(
            name="Metrics vs control",
            anchor=SECTION_METRICS,
            description=(
                "Every metric of `garage evaluate`, one row per sample and metric: the synthetic value "
                "and its 95% interval next to its control (real train vs real held-out cells). "
                "**A difference inside the intervals is no difference**: the *Verdict* column says "
                "*no difference* whenever the two intervals overlap. *Real cells* is how many real "
                "held-out cells a figure rests on. Click *Help* for what each metric measures."
            ),
            helptext=self._metrics_helptext(),
            plot=table.plot(
                data,
                headers,
                _pconfig(
                    "table",
                    id="garage_metrics_table",
                    title="GARAGE: metrics vs control",
                    col1_header="Sample · metric",
                    rows_are_samples=False,
                    sort_rows=False,
                    no_violin=True,
                    parse_numeric=False,
                ),
            ),
        )

    def _metrics_helptext(self) -> str:
        lines = ["| Metric | Measures | Control | Better |", "|---|---|---|---|"]
        for name in METRIC_NAMES:
            spec = METRIC_SPECS[name]
            lines.append(f"| {spec.title} | {spec.description} | {spec.control} | {spec.better} |")
        return "\n".join(lines)

    def _missing_types(self) -> list[str]:
        """``sample: type`` for every real type with no synthetic cells."""
        out: list[str] = []
        for s_name, rows in self._per_type.items():
            for r in rows:
                n_real = (r.get("n_real_train") or 0) + (r.get("n_real_holdout") or 0)
                if r.get("missing") or (r.get("n_synthetic") == 0 and n_real > 0):
                    out.append(f"{s_name}: {r['cell_type']}")
        for s_name, m in self._metrics.items():
            if s_name not in self._per_type:
                out.extend(f"{s_name}: {t}" for t in m.missing_types)
        return out

    def _add_composition_section(self) -> None:
        if not self._per_type:
            return
        counts: dict[str, dict[str, float]] = {}
        fracs: dict[str, dict[str, float]] = {}
        ratio: dict[str, dict[str, float]] = {}
        for s_name, rows in self._per_type.items():
            for r in rows:
                label = self._type_label(s_name, r)
                cat = "rare" if label.endswith("(rare)") else "common"
                # synthetic first: plotly draws the first category at the bottom of each group
                if r.get("n_synthetic") is not None:
                    counts.setdefault(label, {})["synthetic"] = r["n_synthetic"]
                if r.get("n_real_train") is not None:
                    counts.setdefault(label, {})["real_train"] = r["n_real_train"]
                if r.get("frac_synthetic") is not None:
                    fracs.setdefault(label, {})["synthetic"] = r["frac_synthetic"]
                if r.get("frac_real") is not None:
                    fracs.setdefault(label, {})["real"] = r["frac_real"]
                if r.get("frac_synthetic") is not None and r.get("frac_real"):
                    ratio[label] = {cat: r["frac_synthetic"] / r["frac_real"]}
        count_cats = {
            "synthetic": {"name": "Synthetic", "color": "#ff7f00"},
            "real_train": {"name": "Real train", "color": "#377eb8"},
        }
        frac_cats = {
            "synthetic": {"name": "Synthetic", "color": "#ff7f00"},
            "real": {"name": "Real (train + holdout)", "color": "#377eb8"},
        }
        kinds = {
            "common": {"name": "Common type", "color": "#4daf4a"},
            "rare": {"name": "Rare type", "color": "#984ea3"},
        }
        datasets, cats, labels = [], [], []
        if counts:
            datasets.append(counts)
            cats.append(count_cats)
            labels.append({"name": "Cell counts", "ylab": "Cells"})
        if fracs:
            datasets.append(fracs)
            cats.append(frac_cats)
            labels.append({"name": "Fractions", "ylab": "Fraction of cells"})
        if ratio:
            datasets.append(ratio)
            cats.append(kinds)
            labels.append({"name": "Synthetic ÷ real fraction", "ylab": "Synthetic fraction ÷ real fraction"})
        if not datasets:
            return
        description = (
            "Cells per cell type for every sample: the real training cells the generator learnt from "
            "against the synthetic cells; rare types are marked *(rare)*. *Fractions* compares the "
            "compositions (real = train + holdout), and *Synthetic ÷ real fraction* shows how much each "
            "type is over- (above 1) or under-represented (below 1). Use *Log10* to see small types."
        )
        missing = self._missing_types()
        if missing:
            description += "\n\n**Missing from the synthetic data:** " + ", ".join(missing) + "."
        self.add_section(
            name="Cell types: real vs synthetic",
            anchor=SECTION_COMPOSITION,
            description=description,
            plot=bargraph.plot(
                datasets,
                cats,
                _pconfig(
                    "bar",
                    id="garage_composition",
                    title="GARAGE: cells per type, real vs synthetic",
                    ylab="Cells",
                    stacking="group",
                    cpswitch=False,
                    logswitch=True,
                    sort_samples=False,
                    data_labels=labels,
                    tt_decimals=3,
                ),
            ),
        )

    def _add_agreement_section(self) -> None:
        if not self._per_type:
            return
        agreement: dict[str, dict[str, float]] = {}
        mmd: dict[str, dict[str, float]] = {}
        for s_name, rows in self._per_type.items():
            for r in rows:
                label = self._type_label(s_name, r)
                cat = "rare" if label.endswith("(rare)") else "common"
                if r.get("agreement") is not None:
                    agreement[label] = {cat: r["agreement"]}
                if r.get("mmd") is not None:
                    mmd[label] = {cat: r["mmd"]}
        kinds = {
            "common": {"name": "Common type", "color": "#4daf4a"},
            "rare": {"name": "Rare type", "color": "#984ea3"},
        }
        datasets, labels = [], []
        if agreement:
            datasets.append(agreement)
            labels.append({"name": "Agreement", "ylab": "Fraction assigned to own type", "ymax": 1})
        if mmd:
            datasets.append(mmd)
            labels.append({"name": "MMD", "ylab": "MMD (lower is better)"})
        if not datasets:
            return
        description = (
            "How well the synthetic cells of each type look like real cells of that type. *Agreement*: "
            "the fraction of them that a classifier trained on real cells assigns to that type (higher "
            "is better); *MMD* (second tab): distance to the real holdout cells of that type (lower is "
            "better). Rare types, which GARAGE is built to keep, are drawn in purple; a type without a "
            "bar has an agreement of 0."
        )
        missing = self._missing_types()
        if missing:
            description += (
                "\n\nTypes with no synthetic cells, so no agreement at all: " + ", ".join(missing) + "."
            )
        self.add_section(
            name="Per-type agreement",
            anchor=SECTION_AGREEMENT,
            description=description,
            plot=bargraph.plot(
                datasets,
                [kinds] * len(datasets),
                _pconfig(
                    "bar",
                    id="garage_agreement",
                    title="GARAGE: per-type agreement",
                    ylab="Agreement",
                    cpswitch=False,
                    sort_samples=False,
                    data_labels=labels,
                    tt_decimals=3,
                ),
            ),
        )

    def _add_diagnosis_section(self) -> None:
        """Per-type C2ST, spread ratio and DCR ratio (second-wave per-type columns)."""
        if not self._per_type:
            return
        kinds = {
            "common": {"name": "Common type", "color": "#4daf4a"},
            "rare": {"name": "Rare type", "color": "#984ea3"},
        }
        sets = {"c2st": {}, "spread_ratio": {}, "dcr_ratio": {}}
        for s_name, rows in self._per_type.items():
            for r in rows:
                label = self._type_label(s_name, r)
                label = f"{label} [holdout {r.get('n_real_holdout') or 0}]"
                cat = "rare" if r.get("is_rare") else "common"
                for key in sets:
                    if r.get(key) is not None:
                        sets[key][label] = {cat: r[key]}
        names = {
            "c2st": ("Per-type C2ST", "C2ST AUC (0.5 = indistinguishable)"),
            "spread_ratio": ("Spread ratio", "Synthetic ÷ real spread around the type centroid"),
            "dcr_ratio": ("DCR ratio", "Synthetic ÷ real distance to the closest training cell"),
        }
        datasets, labels = [], []
        for key, d in sets.items():
            if d:
                datasets.append(d)
                labels.append({"name": names[key][0], "ylab": names[key][1]})
        if not datasets:
            return
        flags = []
        for s_name, rows in self._per_type.items():
            for r in rows:
                lo, hi = r.get("spread_ratio_ci_low"), r.get("spread_ratio_ci_high")
                v = r.get("spread_ratio")
                if r.get("is_rare") and v is not None and (v < 0.8 or v > 1.2):
                    inside = lo is not None and hi is not None and lo <= 1.0 <= hi
                    flags.append(f"{s_name}: {r['cell_type']} spread {v:.2f}"
                                 + (" (interval includes 1: no difference)" if inside else ""))
        description = (
            "Where the synthetic cells differ, type by type. *Per-type C2ST*: a classifier two-sample "
            "test between the synthetic and the real held-out cells of one type (shown where each side "
            "has enough cells; the control, real train against held-out cells of the type, is in the "
            "per-type table). *Spread ratio*: mean distance of synthetic cells to the type's real "
            "centroid over that of real held-out cells; good is 0.8–1.2, below means prototypical "
            "cells. *DCR ratio*: distance of synthetic cells to their closest training cell over that "
            "of held-out cells (near 1 is good, well below 1 means copies). Labels give the number of "
            "real held-out cells each figure rests on."
        )
        if flags:
            description += "\n\n**Rare types outside 0.8–1.2 spread:** " + "; ".join(flags) + "."
        self.add_section(
            name="Per-type diagnosis",
            anchor=SECTION_DIAGNOSIS,
            description=description,
            plot=bargraph.plot(
                datasets,
                [kinds] * len(datasets),
                _pconfig(
                    "bar",
                    id="garage_diagnosis",
                    title="GARAGE: per-type diagnosis",
                    cpswitch=False,
                    sort_samples=False,
                    data_labels=labels,
                    tt_decimals=3,
                ),
            ),
        )

    def _add_privacy_section(self) -> None:
        names = [n for n in PRIVACY_METRICS if self._values(n) or self._values(n, "control")]
        if not names:
            return
        data: dict[str, dict[str, Any]] = {s: {} for s in self._metrics}
        headers: dict[str, dict[str, Any]] = {}
        has_ok = any(m.privacy_ok is not None for m in self._metrics.values())
        if has_ok:
            for s, m in self._metrics.items():
                if m.privacy_ok is not None:
                    data[s]["privacy_ok"] = "yes" if m.privacy_ok else "NO"
            headers["privacy_ok"] = {
                "title": "Privacy OK",
                "description": "privacy_ok of garage evaluate: no privacy check failed (thresholds in "
                "docs/metrics.md); an empirical check, not a guarantee",
                "scale": False,
                "cond_formatting_rules": {"pass": [{"s_eq": "yes"}], "fail": [{"s_eq": "NO"}]},
            }
        for name in names:
            for s, v in self._values(name).items():
                data[s][name] = v
            headers[name] = self._column(name)
            controls = self._values(name, "control")
            for s, v in controls.items():
                data[s][f"{name}_control"] = v
            if controls:
                headers[f"{name}_control"] = self._column(name, control=True, scale=False)
        copies = {s: v for s, v in self._values("exact_copies").items() if v > 0}
        description = (
            "Whether synthetic cells give away the real training cells. Each metric is shown next to "
            "its control. Exact copies should be 0 (GARAGE redraws them, so this is 0 by "
            "construction); DCR and NNDR ratios well below 1, or an MIA AUC well above 0.5, point to "
            "memorised training cells. The seed metrics ask whether the generator re-emits the GAT "
            "seed cells it was fed: *Seed MIA AUC* against its null, *Seed NN share* against a "
            "shuffled assignment. *Privacy OK* sums up every check (thresholds in docs/metrics.md). "
            "These are empirical attacks, not a differential-privacy guarantee."
        )
        verdicts = []
        for s, m in sorted(self._metrics.items()):
            if m.privacy_ok is None:
                continue
            if m.privacy_ok:
                text = f"**{s}: privacy OK**"
            else:
                text = f"**{s}: privacy NOT OK**: " + "; ".join(m.privacy_reasons)
            if m.privacy_unchecked_types:
                text += (" - **unverified types** (a per-type or seed privacy check could not run "
                         "on their synthetic cells): " + ", ".join(m.privacy_unchecked_types))
            if m.privacy_notes:
                text += " (notes: " + " | ".join(m.privacy_notes) + ")"
            verdicts.append(f"- {text}")
        if verdicts:
            description += "\n\n" + "\n".join(verdicts)
        if copies:
            description += "\n\n**Warning:** synthetic cells identical to training cells in " + ", ".join(
                f"{s} ({_sig(v)})" for s, v in sorted(copies.items())
            ) + "."
        self.add_section(
            name="Privacy",
            anchor=SECTION_PRIVACY,
            description=description,
            helptext="\n\n".join(
                f"**{spec_for(n).title}**: {self._description(n)}" for n in names
            ),
            plot=table.plot(
                {s: d for s, d in data.items() if d},
                headers,
                _pconfig("table", id="garage_privacy_table", title="GARAGE: privacy", no_violin=True),
            ),
        )

    def _add_conditions_section(self) -> None:
        if not self._per_condition:
            return
        data: dict[str, dict[str, Any]] = {}
        for s_name, rows in self._per_condition.items():
            # the condition effect first: it is what a condition-aware generator must keep
            rows = sorted(rows, key=lambda r: r["metric"] != "condition_lfc_corr")
            for r in rows:
                name = r["metric"]
                spec = spec_for(name) if name in METRIC_SPECS else None
                title = spec.title if spec else ("Condition effect (LFC corr)"
                                                 if name == "condition_lfc_corr" else name)
                if r.get("cell_type") not in (None, "", "all"):
                    where = f"{r['cell_type']}: {r['condition']} vs {r.get('reference') or '?'}"
                else:
                    where = r["condition"]
                fmt = (lambda v: None if v is None else f"{v:.3g}")  # noqa: E731
                ci = (None if r.get("ci_low") is None or r.get("ci_high") is None
                      else f"{fmt(r['ci_low'])} – {fmt(r['ci_high'])}")
                cci = (None if r.get("control_ci_low") is None or r.get("control_ci_high") is None
                       else f"{fmt(r['control_ci_low'])} – {fmt(r['control_ci_high'])}")
                data[f"{s_name}{SEP}{where}{SEP}{title}"] = {
                    "synthetic": fmt(r.get("value")) or "n/a",
                    "synthetic_ci": ci,
                    "control": fmt(r.get("control")) or "n/a",
                    "control_ci": cci,
                    "verdict": verdict(r),
                    "n_real": None if r.get("n_real") is None else f"{int(r['n_real']):,}",
                    "n_synthetic": (None if r.get("n_synthetic") is None
                                    else f"{int(r['n_synthetic']):,}"),
                }
        if not data:
            return
        txt = {"scale": False, "format": _as_text}
        headers = {
            "synthetic": {"title": "Synthetic", "description": "Synthetic cells of the condition vs "
                          "real held-out cells of the condition", **txt},
            "synthetic_ci": {"title": "95% CI", "description": "95% interval", **txt},
            "control": {"title": "Control", "description": "Real train vs real held-out cells of the "
                        "condition", **txt},
            "control_ci": {"title": "95% CI ", "description": "95% interval of the control", **txt},
            "verdict": {"title": "Verdict", "description": "'no difference' when the intervals "
                        "overlap", "scale": False},
            "n_real": {"title": "Real cells", "description": "Real held-out cells per draw", **txt},
            "n_synthetic": {"title": "Synthetic cells", "description": "Synthetic cells of the "
                            "condition(s)", **txt},
        }
        self.add_section(
            name="Per condition",
            anchor=SECTION_CONDITIONS,
            description=(
                "For data with a condition (treatment, donor, protocol): every headline metric "
                "computed on the cells of one condition (synthetic of that condition against real "
                "held-out cells of that condition), and the **condition effect**: per cell type, the "
                "per-gene log-fold change between a condition and the type's reference condition in "
                "synthetic cells, correlated with the same in real held-out cells (higher is better; "
                "control: real train cells in place of synthetic ones). A difference inside the "
                "intervals is no difference. The UMAP in *Pictures* has a panel coloured by condition."
            ),
            plot=table.plot(
                data,
                headers,
                _pconfig("table", id="garage_conditions_table", title="GARAGE: per condition",
                         col1_header="Sample · condition · metric", rows_are_samples=False,
                         sort_rows=False, no_violin=True, parse_numeric=False),
            ),
        )

    def _add_pictures_section(self) -> None:
        if not self._images:
            return
        titles = {"umap": "UMAP of real vs synthetic cells", "per_type": "Cells and agreement per type"}
        parts = []
        for s_name in sorted(self._images):
            imgs = self._images[s_name]
            parts.append(f"<h4>{html.escape(s_name)}</h4>")
            for kind in ("umap", "per_type"):
                path = imgs.get(kind)
                if path is None:
                    continue
                with open(path, "rb") as fh:
                    b64 = base64.b64encode(fh.read()).decode("ascii")
                alt = f"{s_name}: {titles[kind]}"
                parts.append(
                    f'<figure class="garage-picture" data-garage-picture="{kind}">'
                    f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}" '
                    f'style="max-width:100%;height:auto;"/>'
                    f"<figcaption>{html.escape(alt)}</figcaption></figure>"
                )
        self.add_section(
            name="Pictures",
            anchor=SECTION_PICTURES,
            description=(
                "The pictures `garage evaluate` drew for each sample: a UMAP of real and synthetic "
                "cells in the shared PCA space (by source, by cell type and, with a condition, by "
                "condition), and cells and label agreement per type with 95% intervals (rare types "
                "in red; the number of real held-out cells in each label)."
            ),
            content="\n".join(parts),
        )
