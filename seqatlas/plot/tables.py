"""What the other plots draw: enrichment rows, score and robust-z histograms computed in
DuckDB, identity rows, ``probe icl`` targets, ``probe doubling`` tables and an index's
calibration curve. Plain lists, dicts and numpy arrays; no drawing.

Histograms: per reference letter, ``bins`` equal bins over the letter's values clipped to
the median +- ``C`` robust scales (``C = max(10, 2 z)``; for robust z, +- ``C``), so one far
outlier does not squeeze the bulk into a bin; the values beyond are counted (``below``,
``above``), never dropped silently. Edges are ``linspace(lo, hi, bins + 1)``; a bin holds
[edge, next edge), the last one both edges.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas.errors import ConfigError, InputError
from seqatlas.index.store import read_meta
from seqatlas.index.vectors import stored_layers
from seqatlas.query import enrichment as _enrichment
from seqatlas.query import identity as _identity
from seqatlas.query.engine import Engine
from seqatlas.query.views import AnomalyParams, require_scores
from seqatlas.store import AtlasReader

ENRICHMENT_COLUMNS = ("group", "odds_ratio", "ci_low", "ci_high", "q_value")
MEASURES = ("identity", "context", "next", "prev")
IDENTITY_COLUMNS = ("layer", *MEASURES, *(f"{m}_chance" for m in MEASURES))
DOUBLING_COLUMNS = ("seq_id", "variant", "icl_gain", "control_gain")
_DOUBLING_HINT = "the table `seqatlas probe doubling FASTA -o FILE` writes"


def reader_of(atlas) -> AtlasReader:
    return atlas if isinstance(atlas, AtlasReader) else AtlasReader(atlas)


def _require_columns(table, needed, what: str, fix: str) -> None:
    if not isinstance(table, pa.Table):
        raise ConfigError(f"{what} must be a pyarrow Table, not {type(table).__name__}; {fix}")
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise InputError(f"{what} lacks the column(s) {', '.join(missing)} (it has "
                         f"{', '.join(table.column_names) or 'none'}); {fix}")


def enrichment_rows(atlas, *, by: str, params: AnomalyParams | None,
                    table: pa.Table | None) -> list[dict]:
    """The rows of ``table``, or of :func:`seqatlas.query.enrichment` of the atlas."""
    if table is None:
        table = _enrichment(atlas, by=by, params=params)
    else:
        _require_columns(table, ENRICHMENT_COLUMNS, "the enrichment table",
                         "pass what seqatlas.query.enrichment returns")
    rows = table.select(list(ENRICHMENT_COLUMNS)).to_pylist()
    if not rows:
        raise InputError("the enrichment table has no groups to draw")
    for row in rows:
        for key in ENRICHMENT_COLUMNS[1:]:
            row[key] = math.nan if row[key] is None else float(row[key])
    return rows


def _clip(low: float, high: float, centre: float, reach: float | None) -> tuple[float, float]:
    if reach is not None:
        low, high = max(low, centre - reach), min(high, centre + reach)
    if not high > low:  # one value: a bin of width 1 around it
        low, high = low - 0.5, high + 0.5
    return low, high


def _histogram(engine, column: str, bounds: dict[str, tuple], bins: int) -> dict[str, dict]:
    """Per ref: counts in ``bins`` equal bins over bounds[ref] = (lo, hi), and the counts
    below lo and above hi, of ``column`` of position_z, binned by DuckDB."""
    refs = list(bounds)
    engine.con.register("plot_bounds", pa.table({
        "ref": pa.array(refs, pa.string()),
        "lo": pa.array([bounds[r][0] for r in refs], pa.float64()),
        "hi": pa.array([bounds[r][1] for r in refs], pa.float64())}))
    try:
        rows = engine.fetch_internal(f"""
            SELECT v.ref, (CASE WHEN v.x < b.lo THEN -1 WHEN v.x > b.hi THEN $1
                           ELSE least(floor((v.x - b.lo) / (b.hi - b.lo) * $1), $1 - 1)
                           END)::BIGINT AS bin, count(*) AS n
            FROM (SELECT ref, "{column}"::DOUBLE AS x FROM position_z
                  WHERE "{column}" IS NOT NULL) v JOIN plot_bounds b USING (ref)
            GROUP BY ALL""", [bins]).to_pylist()
    finally:
        engine.con.unregister("plot_bounds")
    out = {r: {"edges": np.linspace(*bounds[r], bins + 1), "counts": np.zeros(bins, np.int64),
               "below": 0, "above": 0} for r in refs}
    for row in rows:
        entry = out[row["ref"]]
        if row["bin"] < 0:
            entry["below"] += row["n"]
        elif row["bin"] >= bins:
            entry["above"] += row["n"]
        else:
            entry["counts"][row["bin"]] += row["n"]
    return out


def histograms(atlas, *, params: AnomalyParams, bins: int) -> dict:
    """Per reference letter: the score histogram with its robust fit (median, scale, n),
    and the robust-z histogram; see the module docstring."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 1000:
        raise ConfigError(f"bins must be a whole number from 2 to 1000, not {bins!r}")
    reach = max(10.0, 2 * params.z)
    with Engine(atlas, anomaly_params=params, robust_pass=True) as engine:
        column = require_scores(engine, "`plot distribution`")
        fit = {r["ref"]: r for r in engine.fetch_internal(
            "SELECT ref, median, scale FROM robust_stats ORDER BY ref").to_pylist()}
        ranges = engine.fetch_internal("""
            SELECT ref, min(score)::DOUBLE AS lo, max(score)::DOUBLE AS hi, count(*) AS n,
                   min(z)::DOUBLE AS zlo, max(z)::DOUBLE AS zhi, count(z) AS nz
            FROM position_z GROUP BY ref ORDER BY ref""").to_pylist()
        if not ranges:
            raise ConfigError(f"{engine.atlas.path} has no scored positions to draw: ingest "
                              "sequences with `seqatlas ingest FASTA --atlas DIR` first")
        score_bounds, z_bounds = {}, {}
        for r in ranges:
            median, scale = fit[r["ref"]]["median"], fit[r["ref"]]["scale"]
            score_bounds[r["ref"]] = _clip(r["lo"], r["hi"], median,
                                           reach * scale if scale else None)
            if r["nz"]:
                z_bounds[r["ref"]] = _clip(r["zlo"], r["zhi"], 0.0, reach)
        score = _histogram(engine, "score", score_bounds, bins)
        z = _histogram(engine, "z", z_bounds, bins) if z_bounds else {}
    letters = []
    for r in ranges:
        ref = r["ref"]
        letters.append({"ref": ref, "n": r["n"], "median": fit[ref]["median"],
                        "scale": fit[ref]["scale"], "score": score[ref], "z": z.get(ref),
                        "nz": r["nz"]})
    return {"column": column, "threshold": params.z, "smooth": params.smooth,
            "letters": letters, "atlas": str(engine.atlas.path)}


def identity_rows(atlas, *, table: pa.Table | None, options: dict) -> list[dict]:
    """The rows of ``table`` or of :func:`seqatlas.query.identity`, sorted by layer."""
    if table is None:
        reader = reader_of(atlas)
        if not stored_layers(reader):
            raise ConfigError(f"{reader.path} stores no embeddings, which `plot identity` needs: "
                              "ingest the sequences again with them into a new atlas "
                              "(`seqatlas ingest FASTA --atlas NEW_DIR --embeddings float16`)")
        table = _identity(reader, **options)
    else:
        _require_columns(table, IDENTITY_COLUMNS, "the identity table",
                         "pass what seqatlas.query.identity returns")
    rows = sorted(table.to_pylist(), key=lambda r: r["layer"])
    if not rows:
        raise InputError("the identity table has no layers to draw")
    return rows


def icl_targets(atlas) -> list[dict] | None:
    """One row per probed target of the ablations table (seq_id, target_start, target_end,
    method, seed, copy_strand, positions, and the means icl_gain, control_gain, net_gain, as
    the icl_regions view averages them); None when the atlas has no ablations."""
    reader = reader_of(atlas)
    if reader.count("ablations") == 0:
        return None
    with Engine(reader, anomaly_views=False) as engine:
        return engine.fetch_internal("""
            SELECT seq_id, target_start, target_end, method, seed,
                   any_value(copy_strand) AS copy_strand, count(*) AS positions,
                   avg(icl_gain)::DOUBLE AS icl_gain, avg(control_gain)::DOUBLE AS control_gain,
                   avg(net_gain)::DOUBLE AS net_gain
            FROM ablations GROUP BY seq_id, target_start, target_end, method, seed
            ORDER BY method, seed, seq_id, target_start, target_end""").to_pylist()


def _read_doubling(path: Path) -> pa.Table:
    import json

    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pacsv.read_csv(path)
    if suffix in (".tsv", ".txt"):
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
    if suffix in (".jsonl", ".ndjson"):
        return pajson.read_json(path)
    if suffix == ".json":
        return pa.Table.from_pylist(json.loads(path.read_text()))
    return pq.read_table(path)


def doubling_rows(doubling) -> list[dict]:
    """The rows of a ``probe doubling`` table: a pyarrow Table, or the Parquet, CSV, TSV or
    JSON file ``seqatlas probe doubling -o`` writes."""
    if isinstance(doubling, (str, os.PathLike)):
        path = Path(doubling)
        if not path.is_file():
            raise InputError(f"{path}: no such file (doubling is {_DOUBLING_HINT})")
        try:
            table = _read_doubling(path)
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a probe doubling table ({str(exc).splitlines()[0]});"
                             f" pass {_DOUBLING_HINT}") from None
        what = str(path)
    else:
        table, what = doubling, "the doubling table"
    _require_columns(table, DOUBLING_COLUMNS, what, f"pass {_DOUBLING_HINT}")
    rows = table.to_pylist()
    if not rows:
        raise InputError(f"{what} has no rows; pass {_DOUBLING_HINT}")
    for row in rows:
        for key in ("icl_gain", "control_gain"):
            row[key] = math.nan if row[key] is None else float(row[key])
    return rows


def calibration_curve(atlas, *, index: str) -> dict:
    """recall@10 per search setting (nprobe or efSearch) measured when ``index`` was built,
    the setting chosen and the target recall."""
    reader = reader_of(atlas)
    meta = read_meta(reader, index)
    search = meta.get("search") or {}
    curve = search.get("curve")
    if not curve:
        raise ConfigError(f"index {index!r} of {reader.path} ({meta.get('type')}) has no "
                          "calibration curve: an exact index finds every neighbour at any "
                          "setting; build an IVF or HNSW index (`seqatlas index build --type "
                          "ivf-pq`) to calibrate one")
    values = sorted(curve, key=float)
    parameter = search["parameter"]
    return {"index": index, "type": meta.get("type"), "metric": meta.get("metric"),
            "parameter": parameter, "values": np.array([float(v) for v in values]),
            "recall": np.array([float(curve[v]) for v in values]),
            "chosen": search.get(parameter), "target": search.get("target"),
            "queries": search.get("queries"), "atlas": str(reader.path)}
