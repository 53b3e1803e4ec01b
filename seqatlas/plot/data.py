"""What a track of one region draws, read with SQL through the sandboxed engine and filtered
to the region (never a whole table): plain numpy arrays and lists, no drawing. The engine is a
region engine (:func:`seqatlas.query.engine.region_engine`): only the parts, and row groups of
compacted files, around the region are read, and z and the anomalous regions drawn are
exactly the whole atlas's.

A region is ``SEQ:START-END`` in the atlas's own coordinates, 0-based and half-open (``SEQ``
alone: the whole sequence). Up to ``max_positions`` positions every position is returned as
stored; a longer region is cut into bins of ``per_bin = ceil(length / max_positions)``
consecutive positions (the last bin may be shorter), and each value becomes its bin's mean,
minimum and maximum, placed at the mean of the bin's positions. In-context copies beyond
``max_arcs`` are thinned to every ``stride``-th copy in position order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seqatlas.errors import ConfigError
from seqatlas.query.engine import region_engine
from seqatlas.query.views import AnomalyParams, require_ablation_method, require_scores

# the likelihood columns drawn together: a column's strand variants and strand mean
_FAMILIES = (("logp", "logp_rc", "logp_mean"),
             ("logp_unmasked", "logp_unmasked_rc", "logp_unmasked_mean"))
_REGION = "seq_id = $1 AND pos >= $2 AND pos < $3"


@dataclass(frozen=True)
class Region:
    """An interval of one sequence, 0-based half-open, and the sequence's length."""

    seq_id: str
    start: int
    end: int
    length: int

    def __str__(self) -> str:
        return f"{self.seq_id}:{self.start}-{self.end}"

    @property
    def size(self) -> int:
        return self.end - self.start


def likelihood_columns(column: str) -> list[str]:
    """The columns drawn with the score ``column``: its strand variants and mean."""
    for family in _FAMILIES:
        if column in family:
            return list(family)
    return [column]


def _floats(column) -> np.ndarray:
    """An Arrow column as float64, nulls as NaN."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _binned(rows, key: str, n_bins: int, names: list[str]) -> dict[str, dict]:
    """Per name, ``mean``/``min``/``max`` arrays over all ``n_bins`` bins (NaN in empty
    ones) from query rows holding ``key`` (the bin) and ``{name}_mean`` etc."""
    index = rows[key].to_numpy()
    out = {}
    for name in names:
        values = {}
        for stat in ("mean", "min", "max"):
            full = np.full(n_bins, np.nan)
            full[index] = _floats(rows[f"{name}_{stat}"])
            values[stat] = full
        out[name] = values
    return out


def _bin_centres(region: Region, per_bin: int, n_bins: int) -> np.ndarray:
    """The mean position of each bin (the last bin may be shorter)."""
    lo = region.start + per_bin * np.arange(n_bins)
    hi = np.minimum(lo + per_bin, region.end)
    return (lo + hi - 1) / 2


def _series(engine, region: Region, columns: list[str], per_bin: int) -> tuple:
    """(x, {column: {"mean", "min", "max"}}) of ``columns`` of positions and ``z`` of
    position_z; min and max are None unbinned."""
    params = [region.seq_id, region.start, region.end]
    joined = f"""(SELECT * FROM positions WHERE {_REGION}) p
        LEFT JOIN (SELECT pos, z FROM position_z WHERE {_REGION}) zs USING (pos)"""
    values = {c: f'p."{c}"' for c in columns} | {"z": "zs.z"}
    if per_bin == 1:
        select = ", ".join(f"{sql}::DOUBLE AS \"{name}\"" for name, sql in values.items())
        rows = engine.fetch_internal(f"SELECT p.pos, {select} FROM {joined} ORDER BY p.pos",
                                     params)
        x = _floats(rows["pos"])
        return x, {name: {"mean": _floats(rows[name]), "min": None, "max": None}
                   for name in values}
    stats = ", ".join(f"{fn}({sql})::DOUBLE AS \"{name}_{stat}\"" for name, sql in values.items()
                      for fn, stat in (("avg", "mean"), ("min", "min"), ("max", "max")))
    rows = engine.fetch_internal(f"""SELECT (p.pos - $2) // $4 AS bin, {stats} FROM {joined}
                                     GROUP BY bin ORDER BY bin""", params + [per_bin])
    n_bins = math.ceil(region.size / per_bin)
    return _bin_centres(region, per_bin, n_bins), _binned(rows, "bin", n_bins, list(values))


def repeat_rows(engine, region: Region, per_bin: int) -> list[dict]:
    """Repeats overlapping the region, by class; binned, the repeats of one class less than a
    bin apart are merged into one box (a gap narrower than a bin cannot be seen)."""
    params = [region.seq_id, region.start, region.end]
    base = """SELECT coalesce(class, '(unspecified)') AS class, start, "end"
               FROM repeats WHERE seq_id = $1 AND "end" > $2 AND start < $3"""
    if per_bin == 1:
        rows = engine.fetch_internal(f"{base} ORDER BY class, start, \"end\"", params)
        return [{"class": c, "start": s, "end": e, "merged": 1} for c, s, e in
                zip(*(rows[k].to_pylist() for k in ("class", "start", "end")))]
    rows = engine.fetch_internal(f"""
        WITH r AS ({base}),
        reach AS (SELECT *, max("end") OVER (PARTITION BY class ORDER BY start, "end"
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach FROM r),
        grouped AS (SELECT *, sum(CASE WHEN reach IS NULL OR start > reach + $4 THEN 1 ELSE 0
                                   END) OVER (PARTITION BY class ORDER BY start, "end"
                                              ROWS UNBOUNDED PRECEDING) AS box FROM reach)
        SELECT class, min(start) AS start, max("end") AS "end", count(*) AS merged
        FROM grouped GROUP BY class, box ORDER BY class, start""", params + [per_bin])
    return rows.to_pylist()


def copy_arcs(engine, region: Region, total: int, max_arcs: int) -> dict:
    """Positions with an in-context copy (every ``stride``-th beyond ``max_arcs``)."""
    stride = max(1, math.ceil(total / max_arcs)) if total else 1
    rows = engine.fetch_internal(f"""
        SELECT pos, copy_offset, copy_strand FROM (
            SELECT pos, copy_offset, copy_strand, row_number() OVER (ORDER BY pos) - 1 AS i
            FROM positions WHERE {_REGION} AND copy_offset IS NOT NULL)
        WHERE i % $4 = 0 ORDER BY pos""", [region.seq_id, region.start, region.end, stride])
    offsets = rows["copy_offset"].to_numpy(zero_copy_only=False).astype(np.int64)
    strands = [s if s in ("+", "-") else ("+" if o > 0 else "-")
               for s, o in zip(rows["copy_strand"].to_pylist(), offsets)]
    return {"pos": rows["pos"].to_numpy().astype(np.int64), "offset": offsets,
            "strand": np.array(strands, dtype=object), "total": total, "stride": stride}


def _ablations(engine, region: Region, per_bin: int, method: str | None) -> dict:
    """net_gain per (method, seed) in the region: per position, or bin means."""
    params = [region.seq_id, region.start, region.end]
    where, key = f"{_REGION} AND net_gain IS NOT NULL", "pos"
    if per_bin > 1:
        params.append(per_bin)
        key = "(pos - $2) // $4"
    if method is not None:
        params.append(method)
        where += f" AND method = ${len(params)}"
    rows = engine.fetch_internal(f"""
        SELECT method, seed, {key} AS k, avg(net_gain)::DOUBLE AS mean,
               min(net_gain)::DOUBLE AS min, max(net_gain)::DOUBLE AS max
        FROM ablations WHERE {where} GROUP BY ALL ORDER BY method, seed, k""", params)
    combos = engine.fetch_internal(f"SELECT DISTINCT method, seed FROM "
                                   f"{engine.whole_table('ablations')} "
                                   "ORDER BY method, seed").to_pylist()
    series = {}
    for row in rows.to_pylist():
        entry = series.setdefault((row["method"], row["seed"]), {k: [] for k in
                                                                 ("x", "mean", "min", "max")})
        k = row["k"]
        if per_bin == 1:
            entry["x"].append(float(k))
        else:
            lo = region.start + k * per_bin
            entry["x"].append((lo + min(lo + per_bin, region.end) - 1) / 2)
        for stat in ("mean", "min", "max"):
            entry[stat].append(row[stat])
    return {"series": {key: {k: np.asarray(v, dtype=np.float64) for k, v in entry.items()}
                       for key, entry in series.items()},
            "methods": [(c["method"], c["seed"]) for c in combos], "chosen": method}


def track_data(atlas, *, region: str, params: AnomalyParams, max_positions: int,
               max_arcs: int) -> dict:
    """Everything :func:`seqatlas.plot.track` draws for ``region`` (see the module doc)."""
    for name, value in (("max_positions", max_positions), ("max_arcs", max_arcs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number, 1 or more, not {value!r} "
                              f"(--{name.replace('_', '-')})")
    engine, (seq_id, start, end) = region_engine(atlas, region, anomaly_params=params)
    with engine:
        length = engine.fetch_internal("SELECT length FROM sequences WHERE seq_id = $1",
                                       [seq_id])["length"][0].as_py()
        place = Region(seq_id, start, end, length)
        column = require_scores(engine, "`plot track`")
        if params.ablation_method is not None:
            require_ablation_method(engine)
        family = likelihood_columns(column)
        optional = [c for c in dict.fromkeys([*family, "entropy"]) if c != column]
        counts = engine.fetch_internal(
            "SELECT " + ", ".join([f'count("{c}") AS "{c}"' for c in optional] +
                                  ["count(copy_offset) AS copies"]) +
            f" FROM positions WHERE {_REGION}",
            [place.seq_id, place.start, place.end]).to_pylist()[0]
        present = [c for c in optional if counts[c]]
        per_bin = 1 if place.size <= max_positions else math.ceil(place.size / max_positions)
        likelihood = [c for c in family if c == column or c in present]
        x, series = _series(engine, place, list(dict.fromkeys(likelihood + present)), per_bin)
        anomaly_regions = engine.fetch_internal(
            """SELECT start, "end", tail FROM anomaly_regions
               WHERE seq_id = $1 AND "end" > $2 AND start < $3 ORDER BY start, tail""",
            [place.seq_id, place.start, place.end]).to_pylist()
        has_repeats = engine.atlas.count("repeats") > 0
        has_ablations = engine.atlas.count("ablations") > 0
        return {
            "region": place, "column": column, "per_bin": per_bin, "x": x,
            "likelihood": {c: series[c] for c in likelihood},
            "z": series["z"], "entropy": series.get("entropy") if "entropy" in present
            and column != "entropy" else None,
            "threshold": params.z, "tail": params.tail,
            "anomaly_regions": anomaly_regions,
            "repeats": repeat_rows(engine, place, per_bin) if has_repeats else None,
            "copies": copy_arcs(engine, place, counts["copies"], max_arcs),
            "ablations": _ablations(engine, place, per_bin, params.ablation_method)
            if has_ablations else None,
            "atlas": str(engine.atlas.path),
        }
