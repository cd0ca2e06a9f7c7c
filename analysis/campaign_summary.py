"""The numbers of a full radiation run: its run digest, the inputs the model takes from the
other analyses (measured gain, doubling temperature, bias temperature coefficient),
``summary.json`` and the final summary line (``run_full_radiation_pipeline.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from analysis.campaign_runs import stage_folder
from utils.io.index import STAGES
from utils.io.tokens import value_error_text
from utils.run_record import run_digest
from utils.stack.grouping import parse_stage_tag


def run_digest_of(table, log_path, settings, gain) -> str:
    """Hash of the frames (path and mean level), the campaign log and the settings."""
    stamp = sorted(f"{p}:{s}" for p, s in zip(table["PATH"], table.get("MEAN", table["PATH"])))
    log_text = Path(log_path).read_bytes() if log_path else b""
    return run_digest((settings, gain), [], *stamp, log_text.hex()[:4096], str(len(log_text)))


def stage_of(tag: str) -> tuple[str, float]:
    """``(stage, dose)`` of a stage tag (``pre``, ``radiating_D10kR``)."""
    return parse_stage_tag(tag)


def measured_gain(out_dir: Path, pipes) -> str | None:
    """The pre-irradiation photon-transfer gain (else any stage's), as a gain.json path."""
    for label in ["pre"] + sorted(pipes.gains):
        path = stage_folder(out_dir, *stage_of(label)) / "flat" / "gain.json" if label else None
        if path is not None and path.is_file():
            return str(path)
    return None


def doubling_temperature(damage: dict) -> float | None:
    """The damage analysis's population T_d, pre-irradiation first."""
    return doubling_temperature_and_error(damage)[0]


def doubling_temperature_and_error(damage: dict) -> tuple[float | None, float | None]:
    """The damage analysis's population T_d and its error [degC], pre-irradiation first;
    the error None when not given or not finite."""
    values = damage.get("doubling_temperature_degC") or {}
    errors = damage.get("doubling_temperature_err_degC") or {}
    for stage in ("pre", "post"):
        value = values.get(stage)
        if value is not None and math.isfinite(value) and value > 0:
            err = errors.get(stage)
            ok = err is not None and math.isfinite(err) and err >= 0
            return float(value), float(err) if ok else None
    return None, None


def bias_slope(out_dir: Path) -> tuple | None:
    """Mean per-pixel bias temperature coefficient of the pre-irradiation bias model
    ``(value, standard error)`` [adu/degC], for a model whose masters cannot fit it."""

    path = stage_folder(out_dir, "pre", math.nan) / "bias" / "bias_model.fits"
    if not path.is_file():
        return None
    with fits.open(path) as hdul:
        b = np.asarray(hdul["B"].data, float)
    b = b[np.isfinite(b)]
    return (float(b.mean()), float(b.std(ddof=1) / math.sqrt(b.size))) if b.size > 1 else None


def _param(model, name: str) -> dict | None:
    if not model.fit.constrained(name):
        return None
    row = model.fit.parameters[model.fit.parameters["param"] == name].iloc[0]
    return {"value": float(row["value"]), "err": float(row["err"]),
            "err_stat": float(row["err_stat"]), "err_td": float(row["err_td"]),
            "unit": row["unit"]}


def campaign_summary(layout, conversion, table, dose_report, log_path, log_note, pipes, damage,
                     model, recon, checks, out_dir: Path) -> dict:
    """``summary.json``: counts, the damage analysis's key numbers and the model's parameters
    as ``{value, err, unit}`` (the model's also ``err_stat``, ``err_td``: see
    ``fit_results.json``; null when not measured or not constrained), the checks, the
    folders."""
    hot = damage.get("hot_pixels") or {}
    growth = None
    if "pre" in hot and len(hot) > 1:
        last = [k for k in hot if k.startswith("radiating")]
        if last:
            growth = {"value": hot[last[-1]] - hot["pre"], "err": None, "unit": "pixels",
                      "from": "pre", "to": last[-1], "counts": hot,
                      "criterion": damage.get("hot_pixels_criterion")}

    def with_err(key, unit):
        value, err = damage.get(key), damage.get(f"{key}_err")
        if value is None or not math.isfinite(value):
            return None
        return {"value": value, "err": err if err is not None and math.isfinite(err) else None,
                "unit": unit}

    unit = damage.get("unit", "e-/s")
    return {
        "layout": layout.kind, "dataset": str(layout.root),
        "converted": conversion.get("converted", 0), "existing": conversion.get("existing", 0),
        "rejected": conversion.get("rejected", 0), "indexed": int(len(table)),
        "badfits": int(table["BADFITS"].astype(bool).sum()),
        "uncovered": int(dose_report.uncovered), "index": str(out_dir / "index.csv"),
        "radiation_log": str(log_path), "radiation_log_source": log_note,
        "damage_slope": with_err("damage_slope", f"{unit}/krad"),
        "recovered_fraction": with_err("recovered_fraction", "1"),
        "hot_pixel_growth": growth,
        "model_parameters": {name: _param(model, name)
                             for name in model.fit.parameters["param"]},
        "model_unconstrained": {r["param"]: r["reason"] for _, r in
                                model.fit.parameters.iterrows() if not r["constrained"]},
        "pipelines_skipped": pipes.skipped,
        "reconstruction": str(recon.table_path) if recon.table_path else None,
        "procedure_checks": {"path": str(checks.path), **checks.counts()},
        "folders": {s: str(stage_folder(out_dir, s, math.nan)) for s in STAGES}
        | {"precision": str(out_dir / "precision"),
           "radiation_model": str(out_dir / "radiation_model")},
    }


def summary_line(summary: dict) -> str:
    """The final log line: key results and where everything is."""
    def fmt(item):
        if not item:
            return "n/a"
        if item.get("err") is None and float(item["value"]).is_integer():   # a count
            return f"{int(item['value'])} {item['unit']}"
        return value_error_text(item["value"], item.get("err"), item["unit"])
    params = summary.get("model_parameters") or {}
    checks = summary.get("procedure_checks") or {}
    counts = ", ".join(f"{checks[k]} {k}" for k in ("pass", "warn", "fail", "not_logged")
                       if checks.get(k))
    model = ", ".join(f"{k} {fmt(v)}" if v else f"{k} not constrained"
                      for k, v in params.items())
    return (f"done: {summary['indexed']} frames indexed ({summary['converted']} converted, "
            f"{summary['rejected']} rejected, {summary['uncovered']} without a dose); damage "
            f"slope {fmt(summary.get('damage_slope'))}; recovered fraction "
            f"{fmt(summary.get('recovered_fraction'))}; hot-pixel growth "
            f"{fmt(summary.get('hot_pixel_growth'))}; model: {model}; procedure checks: "
            f"{counts or 'none'}; everything in {Path(summary['index']).parent} "
            f"(summary.json, procedure_checks.csv, report/index.html)")


__all__ = ["run_digest_of", "stage_of", "measured_gain", "doubling_temperature",
           "doubling_temperature_and_error", "bias_slope",
           "campaign_summary", "summary_line"]
