"""Storage at genome scale: the commit log against the rewritten manifest, and a synthetic
atlas of 300 M positions before and after compaction.

    python benchmarks/storage.py                  # both parts (~40 min on 2 cores)
    python benchmarks/storage.py --part commits   # commit cost only (~10 min)
    python benchmarks/storage.py --part atlas --positions 300000000 --keep /tmp/big

Part ``commits``: units are simulated (one-row positions parts, unit records shaped like an
ingest's) but go through the real commit path (AtlasWriter.commit: part written, entry
created, segments). The manifest baseline is what every commit did before the log: copy the
manifest (``Manifest.from_json(to_json())``, the rollback copy), apply the unit, serialise it
and replace atlas.json atomically; at 100,000 units it is timed over 20 commits on a
manifest of that size (running 100,000 of them would take hours, which is the point).

Part ``atlas``: the letters of ``../shared/data/hs37_chrX_70Mb.fa.gz`` tiled into
sequences of 62 Mb (chrX_0, chrX_1, ...), synthetic scores (logp ~ N(-1.3, 0.5) per base,
null at N), committed unit by unit (7,000 positions a unit, the default unit size of a
65,536-token fast-mode ingest) through the real writer, with the real TRF repeats of chrX
copied onto each sequence. Then: time to open, a 1 kb and a 1 Mb region read (`query sql`
with --region), `query anomalies` and `enrichment`, each in a fresh process with its peak
RSS; then `seqatlas compact` and the same again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODEL = {"name": "synthetic", "weights_sha256": "0" * 64,
         "tokenizer": {"family": "single", "letters": "ACGT"}, "hidden_size": None}
SCORING = {"likelihood": "exact", "embeddings": False, "strands": "forward", "copy_k": 0,
           "skip_n_runs": 0, "window": 512, "overlap": 128, "unit_tokens": 65536}


# -- part 1: commit cost ---------------------------------------------------------------------

def _unit_record(i: int) -> dict:
    return {"seq_ids": ["chrX"], "positions": 7000, "unscored": 0, "real_tokens": 9000,
            "computed_tokens": 9400, "key_scheme": 2}


def _one_row(i: int):
    from seqatlas import schema

    return pa.Table.from_pylist([{"seq_id": "chrX", "pos": i, "ref": "A", "soft_masked": False,
                                  "logp": -1.0}], schema=schema.POSITIONS)


def _key(i: int) -> str:
    import hashlib

    return hashlib.sha256(f"unit {i}".encode()).hexdigest()


def manifest_commit_seconds(units: int, repeats: int = 20) -> tuple[float, int]:
    """Seconds per commit and bytes per commit of the pre-log manifest, at ``units``."""
    from seqatlas.manifest import Manifest, PartRecord
    from seqatlas.util import atomic_write

    manifest = Manifest(schema_version=2, seqatlas_version="x", created="t", updated="t",
                        kind="dna", kind_detected=False, model=None, scoring=None,
                        parts={"positions": {}, "tokens": {}})
    for i in range(units):
        key = _key(i)
        for table in ("positions", "tokens"):
            manifest.parts[table][f"part-{key[:24]}.parquet"] = PartRecord(
                rows=7000, bytes=140000, unit=key, sha256=key)
        manifest.units[key] = {**_unit_record(i), "committed": "2026-12-07T00:00:00+00:00"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas.json"
        started = time.perf_counter()
        for i in range(units, units + repeats):
            Manifest.from_json(manifest.to_json())  # the rollback copy every commit made
            key = _key(i)
            for table in ("positions", "tokens"):
                manifest.parts[table][f"part-{key[:24]}.parquet"] = PartRecord(
                    rows=7000, bytes=140000, unit=key, sha256=key)
            manifest.units[key] = _unit_record(i)
            data = manifest.dumps()
            atomic_write(path, data)
        return (time.perf_counter() - started) / repeats, len(data)


def log_commits(sizes: list[int]) -> list[dict]:
    """Commit units through the real path up to max(sizes); at each size, the mean seconds
    and log bytes per commit over the 200 commits before it, and the time to open."""
    from seqatlas.store import AtlasReader, AtlasWriter

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas"
        writer = AtlasWriter(path, kind="dna", model=MODEL, scoring=SCORING)
        window: list[tuple[float, int, int]] = []
        for i in range(max(sizes)):
            entry, total = writer.journal.entry_bytes, writer.journal.bytes_written
            started = time.perf_counter()
            writer.commit(_key(i), {"positions": _one_row(i)}, unit=_unit_record(i))
            window.append((time.perf_counter() - started, writer.journal.entry_bytes - entry,
                           writer.journal.bytes_written - total))
            window = window[-1000:]
            if i + 1 in sizes:
                recent = window[-200:]
                started = time.perf_counter()
                AtlasReader(path)
                opened = time.perf_counter() - started
                rows.append({"units": i + 1,
                             "seconds_per_commit": sum(r[0] for r in recent) / len(recent),
                             "median_seconds": float(np.median([r[0] for r in recent])),
                             "entry_bytes": sum(r[1] for r in recent) / len(recent),
                             "log_bytes_amortised": sum(r[2] for r in window) / len(window),
                             "open_seconds": opened})
                print(f"  log at {i + 1:,} units: {rows[-1]}", flush=True)
        writer.close()
    return rows


def commits_part(sizes: list[int]) -> dict:
    log = log_commits(sizes)
    baseline = []
    for units in sizes:
        seconds, size = manifest_commit_seconds(units, repeats=20 if units <= 10000 else 5)
        baseline.append({"units": units, "seconds_per_commit": seconds, "bytes_per_commit": size})
        print(f"  manifest at {units:,} units: {baseline[-1]}", flush=True)
    print("\ncommit cost (per commit, at the atlas size)")
    print(f"{'units':>9} {'manifest s':>11} {'manifest B':>12} {'log s':>9} {'median':>8} "
          f"{'entry B':>8} {'log B (amort.)':>14} {'speed-up':>9} {'open s':>7}")
    for m, g in zip(baseline, log):
        print(f"{m['units']:>9,} {m['seconds_per_commit']:>11.4f} {m['bytes_per_commit']:>12,} "
              f"{g['seconds_per_commit']:>9.4f} {g['median_seconds']:>8.4f} "
              f"{g['entry_bytes']:>8.0f} "
              f"{g['log_bytes_amortised']:>14.0f} "
              f"{m['seconds_per_commit'] / g['seconds_per_commit']:>8.1f}x "
              f"{g['open_seconds']:>7.3f}")
    return {"manifest": baseline, "log": log}


# -- part 2: a synthetic genome-scale atlas --------------------------------------------------

def _letters(limit: int) -> bytes:
    with gzip.open(DATA / "hs37_chrX_70Mb.fa.gz", "rb") as fh:
        fh.readline()
        return b"".join(line.strip() for line in fh)[:limit]


def build_atlas(path: Path, positions: int, unit: int, seq_length: int) -> dict:
    from seqatlas import schema
    from seqatlas.repeats.formats import read_repeats
    from seqatlas.store import AtlasWriter

    letters = _letters(seq_length)
    names = [f"chrX_{i}" for i in range(-(-positions // seq_length))]
    lengths = [min(seq_length, positions - i * seq_length) for i in range(len(names))]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with AtlasWriter(path, kind="dna", model=MODEL, scoring=SCORING) as writer:
        offsets = np.cumsum([0] + lengths[:-1])
        writer.commit("sequences-synthetic", {"sequences": pa.table({
            "seq_id": names, "ordinal": list(range(len(names))), "length": lengths,
            "description": [f"chrX tiled, copy {i}" for i in range(len(names))],
            "source": ["synthetic"] * len(names), "sha1": [None] * len(names),
            "global_start": offsets.tolist(), "token_offset": offsets.tolist()},
            schema=schema.SEQUENCES)}, unit={"input": "synthetic"})
        committed = 0
        for name, length in zip(names, lengths):
            codes = np.frombuffer(letters[:length], dtype="S1")
            for start in range(0, length, unit):
                chunk = codes[start:start + unit]
                n = len(chunk)
                upper = np.char.upper(chunk)
                logp = rng.normal(-1.3, 0.5, n).astype(np.float32)
                scored = upper != b"N"
                pos = np.arange(start, start + n, dtype=np.int64)
                window = (pos // 384) * 384
                table = pa.table({
                    "seq_id": pa.array([name] * n, pa.string()),
                    "pos": pos, "ref": pa.array(upper).cast(pa.string()),
                    "soft_masked": np.char.islower(chunk.astype("U1")),
                    "logp": pa.array(logp, mask=~scored),
                    "window_start": pa.array(window, mask=~scored),
                    "window_end": pa.array(np.minimum(window + 512, length), mask=~scored)})
                table = _complete(table, schema.POSITIONS)
                writer.commit(_key(committed), {"positions": table},
                              unit={"seq_ids": [name], "positions": n, "key_scheme": 2})
                committed += 1
                if committed % 5000 == 0:
                    print(f"  {committed:,} units, {start + n:,} of {name} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
        trf = read_repeats(DATA / "hs37_chrX_70Mb.trf-ngs.dat.gz", format="trf-ngs")
        for name, length in zip(names, lengths):
            import pyarrow.compute as pc

            copy = trf.filter(pc.less_equal(trf["end"], length))
            copy = copy.set_column(0, schema.REPEATS.field("seq_id"),
                                   pa.array([name] * copy.num_rows, pa.string()))
            writer.commit(f"repeats-{name}", {"repeats": copy}, unit={"format": "trf-ngs"})
    return {"units": committed, "positions": int(sum(lengths)), "sequences": len(names),
            "seconds": time.perf_counter() - started}


def _complete(table: pa.Table, arrow_schema: pa.Schema) -> pa.Table:
    columns = [table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows,
                                                                          f.type)
               for f in arrow_schema]
    return pa.Table.from_arrays(columns, schema=arrow_schema)


_PROBE = r"""
import json, resource, sys, time
started = time.perf_counter()
import seqatlas
from seqatlas import query
atlas, what, arg = sys.argv[1], sys.argv[2], sys.argv[3]
began = time.perf_counter()
reader = seqatlas.Atlas(atlas)
opened = time.perf_counter() - began
began = time.perf_counter()
if what == "open":
    rows = reader.count("positions")
elif what == "region":  # on the open atlas; the second read shows the warm cost
    sql = "SELECT count(*) AS n, avg(logp) AS m FROM positions"
    rows = query.sql(reader, sql, region=arg).to_pylist()[0]["n"]
    first = time.perf_counter() - began
    began = time.perf_counter()
    query.sql(reader, sql, region=arg)
elif what == "anomalies":
    rows = reader.anomalies(z=4.0).num_rows
elif what == "enrichment":
    rows = reader.enrichment(by="class", z=4.0).num_rows
seconds = time.perf_counter() - began
out = {"open_seconds": opened, "seconds": seconds, "rows": rows,
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if what == "region":
    out["first_seconds"] = first
print(json.dumps(out))
"""


def probe(atlas: Path, what: str, arg: str = "") -> dict:
    env = {**os.environ, "SEQATLAS_CACHE_DIR": os.environ.get("SEQATLAS_CACHE_DIR",
                                                               tempfile.gettempdir())}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(atlas), what, arg],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(atlas: Path, label: str, first: str) -> dict:
    results = {"open": probe(atlas, "open"),
               # before the robust statistics are cached, a region engine also prepares the
               # whole positions table (to compute them when a query needs z)
               "region_1kb_uncached": probe(atlas, "region", f"{first}:30000000-30001000"),
               "anomalies": probe(atlas, "anomalies"),
               "region_1kb": probe(atlas, "region", f"{first}:30000000-30001000"),
               "region_1Mb": probe(atlas, "region", f"{first}:30000000-31000000"),
               "enrichment": probe(atlas, "enrichment")}
    for name, r in results.items():
        print(f"  {label:>18} {name:>11}: {r}", flush=True)
    return results


def atlas_part(positions: int, unit: int, keep: Path | None, reuse: bool = False) -> dict:
    root = keep or Path(tempfile.mkdtemp(prefix="seqatlas-storage-"))
    path = root / "atlas"
    if reuse and (root / "loose").exists():  # measure again on a kept, uncompacted copy
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(root / "loose", path)
        built = json.loads((root / "built.json").read_text())
    else:
        if path.exists():
            shutil.rmtree(path)
        built = build_atlas(path, positions, unit, seq_length=62_000_000)
        if keep is not None:
            shutil.rmtree(root / "loose", ignore_errors=True)
            shutil.copytree(path, root / "loose")
            (root / "built.json").write_text(json.dumps(built))
    print(f"  built: {built}", flush=True)
    before = measure(path, "before compaction", "chrX_1")
    started = time.perf_counter()
    import seqatlas

    child = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = seqatlas.compact(path)
    compaction = {"seconds": time.perf_counter() - started,
                  "peak_rss_mb": max(child, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                  / 1024, "tables": report["tables"]}
    print(f"  compaction: {compaction}", flush=True)
    after = measure(path, "after compaction", "chrX_1")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    if keep is None:
        shutil.rmtree(root)
    return {"built": built, "before": before, "compaction": compaction, "after": after,
            "bytes_on_disk": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["commits", "atlas", "both"], default="both")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--positions", type=int, default=300_000_000)
    parser.add_argument("--unit", type=int, default=7000, help="positions per unit")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the atlas here and keep it (and an uncompacted copy)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure again on the copy a run with --keep kept")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    if args.part in ("commits", "both"):
        results["commits"] = commits_part([int(s) for s in args.sizes.split(",")])
    if args.part in ("atlas", "both"):
        if not (DATA / "hs37_chrX_70Mb.fa.gz").exists():
            sys.exit(f"needs {DATA}/hs37_chrX_70Mb.fa.gz")
        results["atlas"] = atlas_part(args.positions, args.unit, args.keep, args.reuse)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
