"""Benchmark: likelihood anomalies x real tandem repeats on chrX (70 Mb), DuckDB vs bedtools.

In one run, on the positions of chrX and the real tantan repeats of ``../shared/data``:

1. import of the tantan ``-f4`` repeats (77k) with ``seqatlas annotate``;
2. robust z (median/MAD per letter, first query computes and caches it);
3. the anomaly x repeat overlap join (anomalous positions as 1-base intervals, all pairs) on
   global coordinates, i.e. DuckDB's range join, and the same join written with an extra
   ``seq_id`` equality on local coordinates (the hash-join trap) for the ratio;
4. ``anomalies --with-repeats`` (regions) and ``enrichment --by class``/``--by name``;
5. ``bedtools intersect -sorted -wa -wb`` on the same anomalies and repeats as BED files:
   identical pairs are checked, and the time ratio printed.

Positions come from ``--atlas`` (an unmasked ingest of chrX by benchmarks/genome_scale.py;
it is copied, not changed) or, without it, synthetic logp (normal, per-letter means) at the
real chrX coordinates and letters, N runs unscored.

Usage: python benchmarks/repeat_join.py [--atlas DIR] [--limit-mb 70] [--z 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_atlas(path: Path, chrx: Path, limit: int) -> None:
    """logp ~ N(mu_letter, 0.5) at the real chrX letters; N positions unscored."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from seqatlas import schema
    from seqatlas.store import AtlasWriter

    with gzip.open(chrx, "rt") as fh:
        header = fh.readline()[1:].split()[0]
        residues = "".join(line.strip() for line in fh)[:limit].upper()
    letters = np.frombuffer(residues.encode(), dtype=np.uint8)
    rng = np.random.default_rng(0)
    means = {ord("A"): -1.2, ord("C"): -1.5, ord("G"): -1.5, ord("T"): -1.2}
    logp = rng.normal(0, 0.5, len(letters)).astype(np.float32)
    for letter, mean in means.items():
        logp[letters == letter] += mean
    scored = letters != ord("N")
    model = {"name": "synthetic", "model_type": "none", "parameters": 0, "weights_sha256": "0",
             "tokenizer": {"family": "single"}, "hidden_size": 0}
    scoring = {"likelihood": "unmasked", "embeddings": False, "strands": "forward"}
    chunk = 8_000_000
    with AtlasWriter(path, kind="dna", model=model, scoring=scoring) as writer:
        writer.commit("sequences" + "0" * 15, {"sequences": pa.table({
            "seq_id": [header], "ordinal": [0], "length": [len(letters)], "description": [""],
            "source": [str(chrx)], "sha1": [""], "global_start": [0], "token_offset": [0]},
            schema=schema.SEQUENCES)})
        for start in range(0, len(letters), chunk):
            end = min(start + chunk, len(letters))
            n = end - start
            columns = {"seq_id": pa.array([header] * n), "pos": pa.array(np.arange(start, end)),
                       "ref": pa.array(letters[start:end].view("S1").astype(str)),
                       "soft_masked": pa.array(np.zeros(n, dtype=bool)),
                       "logp_unmasked": pa.array(logp[start:end], mask=~scored[start:end])}
            table = pa.Table.from_arrays(
                [columns.get(f.name, pa.nulls(n, f.type)) for f in schema.POSITIONS],
                schema=schema.POSITIONS)
            writer.commit(f"{start:024d}", {"positions": table})


def timed(label: str, timings: dict, work):
    started = time.perf_counter()
    result = work()
    timings[label] = round(time.perf_counter() - started, 3)
    print(f"{label}: {timings[label]:.2f} s", flush=True)
    return result


MATERIALISE = """
    CREATE TEMP TABLE anomalous AS
    SELECT z.seq_id, z.pos, s.global_start + z.pos AS g FROM anomalies z
    JOIN sequences s USING (seq_id)"""
PAIRS_GLOBAL = """
    SELECT a.pos, rp.start AS repeat_start, rp."end" AS repeat_end
    FROM anomalous a JOIN repeats_global rp ON rp.gstart <= a.g AND a.g < rp.gend"""
PAIRS_HASH_TRAP = """
    SELECT a.pos, rp.start AS repeat_start, rp."end" AS repeat_end
    FROM anomalous a JOIN repeats rp
      ON a.seq_id = rp.seq_id AND rp.start <= a.pos AND a.pos < rp."end" """


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", type=Path, help="an unmasked chrX atlas (copied)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit-mb", type=float, default=70.0,
                        help="synthetic positions only: the first N Mb")
    parser.add_argument("--z", type=float, default=3.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--trap-timeout", type=float, default=300.0,
                        help="cancel the hash-join variant after this many seconds")
    args = parser.parse_args()

    import seqatlas
    from seqatlas.errors import QueryError
    from seqatlas.query import AnomalyParams, Engine, SqlConfig
    from seqatlas.query.sandbox import arrow_table

    work = args.workdir or Path(tempfile.mkdtemp(prefix="seqatlas-join-"))
    atlas = work / "atlas"
    shutil.rmtree(atlas, ignore_errors=True)
    timings: dict = {}
    if args.atlas:
        timed("copy atlas", timings, lambda: shutil.copytree(args.atlas, atlas))
        source = f"ingest {args.atlas}"
    else:
        timed("synthetic atlas", timings, lambda: synthetic_atlas(
            atlas, args.data / "hs37_chrX_70Mb.fa.gz", int(args.limit_mb * 1e6)))
        source = "synthetic logp at real chrX letters"
    tantan = args.data / "hs37_chrX_70Mb.tantan-f4.tsv.gz"
    length = seqatlas.Atlas(atlas).sequences(columns=["length"])["length"][0].as_py()
    if length < 69_999_930:  # a prefix: keep the repeats that lie inside it
        kept = work / "tantan-prefix.tsv"
        with gzip.open(tantan, "rt") as fh, open(kept, "w") as out:
            out.writelines(line for line in fh if int(line.split("\t")[2]) <= length)
        tantan = kept
    imported = timed("annotate tantan -f4", timings,
                     lambda: seqatlas.annotate(tantan, atlas=atlas, format="tantan-f4"))
    params = AnomalyParams(z=args.z)
    summary = {"positions": seqatlas.Atlas(atlas).count("positions"), "source": source,
               "repeats": imported["repeats"], "z": args.z}
    timed("robust z per letter (first query computes and caches it)", timings,
          lambda: Engine(atlas, anomaly_params=params).close())
    timed("open engine again (cached z)", timings,
          lambda: Engine(atlas, anomaly_params=params).close())
    with Engine(atlas, SqlConfig(timeout=args.trap_timeout), anomaly_params=params) as engine:
        timed("anomalous positions (z over all positions, materialised)", timings,
              lambda: engine.con.execute(MATERIALISE))
        summary["anomalous_positions"] = engine.execute_internal(
            "SELECT count(*) FROM anomalous").fetchall()[0][0]
        pairs = timed("duckdb overlap join (range join)", timings,
                      lambda: arrow_table(engine.execute_internal(PAIRS_GLOBAL)))
        try:
            trap = timed("duckdb overlap join with seq_id equality (hash join)", timings,
                         lambda: engine.run(PAIRS_HASH_TRAP))
        except QueryError:
            trap = None
            timings["duckdb overlap join with seq_id equality (hash join)"] = \
                f"> {args.trap_timeout} (cancelled)"
        plan = "\n".join(r[1] for r in engine.execute_internal(
            "EXPLAIN " + PAIRS_GLOBAL).fetchall())
        summary["range_join_operator"] = next(
            (op for op in ("IE Join", "IEJoin", "Piecewise Merge Join", "Nested Loop Join")
             if op in plan), "other")
        anomalies_bed = work / "anomalies.bed"
        repeats_bed = work / "repeats.bed"
        timed("write BED files for bedtools", timings,
              lambda: _write_beds(engine, anomalies_bed, repeats_bed))
    summary["pairs"] = pairs.num_rows
    same_trap = None if trap is None else _pair_set(pairs) == _pair_set(trap)
    rss_duckdb = peak_rss_mb()

    rss_file = work / "bedtools.maxrss"
    # GNU time reports bedtools' own peak RSS (a forked child would count Python's pages)
    prefix = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] \
        if Path("/usr/bin/time").exists() else []

    def run_bedtools():
        return subprocess.run(prefix + ["bedtools", "intersect", "-a", str(anomalies_bed), "-b",
                                        str(repeats_bed), "-wa", "-wb", "-sorted"], check=True,
                              capture_output=True, text=True).stdout

    if shutil.which("bedtools"):
        bed_out = timed("bedtools intersect -sorted", timings, run_bedtools)
        bed_pairs = {(int(f[1]), int(f[4]), int(f[5])) for f in
                     (line.split("\t") for line in bed_out.splitlines())}
        summary["bedtools_pairs"] = len(bed_pairs)
        summary["identical_to_bedtools"] = bed_pairs == _pair_set(pairs)
        if rss_file.exists():
            summary["bedtools_peak_rss_mb"] = round(int(rss_file.read_text().split()[-1]) / 1024,
                                                    1)
        summary["ratio_bedtools_over_duckdb"] = round(
            timings["bedtools intersect -sorted"] / timings["duckdb overlap join (range join)"],
            2)
    else:
        summary["bedtools"] = "not installed (Debian package bedtools)"
    summary["identical_with_hash_join"] = same_trap
    trap_s = timings["duckdb overlap join with seq_id equality (hash join)"]
    summary["ratio_hash_join_over_range_join"] = (
        round(trap_s / timings["duckdb overlap join (range join)"], 2)
        if isinstance(trap_s, float) else f"> {args.trap_timeout / timings['duckdb overlap join (range join)']:.0f}")

    regions = timed("anomalies --with-repeats (regions)", timings,
                    lambda: seqatlas.query.anomalies(atlas, params=params, with_repeats=True))
    summary["anomaly_regions"] = regions.num_rows
    summary["regions_in_repeats"] = sum(r is not None for r in
                                        regions.column("repeat_classes").to_pylist())
    for by in ("class", "name"):
        table = timed(f"enrichment --by {by}", timings,
                      lambda: seqatlas.query.enrichment(atlas, by=by, params=params))
        if by == "class":
            summary["enrichment_by_class"] = table.to_pylist()
        else:
            summary["enrichment_by_name_groups"] = table.num_rows
    summary["peak_rss_mb_python_duckdb"] = round(max(rss_duckdb, peak_rss_mb()), 1)
    summary["timings_s"] = timings
    print(json.dumps(summary, indent=1, default=str))


def _write_beds(engine, anomalies_bed: Path, repeats_bed: Path) -> None:
    from seqatlas.query.sandbox import arrow_reader
    from seqatlas.query.tracks import _write_tsv

    _write_tsv(arrow_reader(engine.execute_internal(
        'SELECT seq_id, pos AS start, pos + 1 AS "end" FROM anomalous ORDER BY pos')),
        anomalies_bed)
    _write_tsv(arrow_reader(engine.execute_internal(
        'SELECT seq_id, start, "end" FROM repeats ORDER BY start, "end"')), repeats_bed)


def _pair_set(table: pa.Table) -> set:
    return set(zip(table.column("pos").to_pylist(), table.column("repeat_start").to_pylist(),
                   table.column("repeat_end").to_pylist()))


if __name__ == "__main__":
    main()
