"""Benchmark: ``probe icl`` on held-out human chrX with ``dnabert6-tiny``, against its ingest.

1. Ingest of X:62,000,000-63,000,000 (1 Mb of ``hs37_chrX_70Mb.fa.gz``, held out from the
   model's training) with ``dnabert6-tiny``, embeddings off, copy detection on (k = 12), in
   ``--likelihood`` mode (default fast: exact over 1 Mb is about 130M tokens on 2 cores).
2. ``annotate --run tantan`` (real tandem repeats) and ``annotate --detect``.
3. ``probe icl --method mask`` in the same mode: targets, positions rescored, wall time and
   tokens computed as a ratio of the ingest's (aim: <= 0.5), control rules.
4. Mean icl_gain, control_gain and net_gain by kind of copy: inside a tantan tandem repeat,
   reverse-complement copy, other (interspersed) direct copy.
5. The query that answers "which anomalously likely positions are explained by look-up":
   ``query enrichment --by class --tail high`` (mean_net_gain, explained_fraction per repeat
   class) and the high-tail regions with the largest explained fraction.

Usage: python benchmarks/probe_icl.py [--start-mb 62] [--length-kb 1000] [--likelihood fast]
(needs ../shared/data and tantan on PATH).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_knn import DATA, write_slice  # noqa: E402 (the chrX slice, as index_knn takes it)

KINDS_SQL = """
    SELECT CASE WHEN copy_strand = '-' THEN 'reverse-complement copy'
                WHEN repeat_classes LIKE '%Tandem_repeat%' THEN 'in a tandem repeat (tantan)'
                ELSE 'interspersed direct copy' END AS kind,
           count(*) AS targets, sum(n_probed) AS positions,
           sum(mean_icl_gain * n_probed) / sum(n_probed) AS icl_gain,
           sum(mean_control_gain * n_probed) / sum(n_probed) AS control_gain,
           sum(mean_net_gain * n_probed) / sum(n_probed) AS net_gain,
           avg(abs(copy_distance)) AS mean_distance
    FROM icl_regions GROUP BY 1 ORDER BY 1"""


def _show(table, title: str, limit: int = 12) -> None:
    print(f"\n{title}")
    print("\t".join(table.column_names))
    for row in table.slice(0, limit).to_pylist():
        print("\t".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))


def main() -> None:  # noqa: PLR0915 (one linear script)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-mb", type=float, default=62)
    parser.add_argument("--length-kb", type=float, default=1000)
    parser.add_argument("--likelihood", default="fast")
    parser.add_argument("--workdir", help="keep the atlas here (a re-run resumes or reuses "
                        "it; the timings are those of the work each step still had to do)")
    args = parser.parse_args()
    if not (DATA / "hs37_chrX_70Mb.fa.gz").exists():
        raise SystemExit("this benchmark needs ../shared/data")
    if shutil.which("tantan") is None:
        raise SystemExit("this benchmark needs tantan on PATH (apt-get install tantan)")
    import seqatlas
    from seqatlas.query import AnomalyParams, enrichment

    from seqatlas.util import start_ray

    # one Ray session for both steps, started before the clocks, so neither pays for it
    start_ray(None, error=RuntimeError, fallback="check the Ray installation")
    start, length = int(args.start_mb * 1e6), int(args.length_kb * 1e3)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.workdir) if args.workdir else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        fasta = Path(tmp) / "region.fa"
        write_slice(fasta, start, length)
        atlas = Path(tmp) / "atlas"
        common = {"workers": 1, "cpus_per_worker": 2, "progress": False}
        t0 = time.perf_counter()
        ingest = seqatlas.ingest(fasta, atlas=atlas, model="dnabert6-tiny", embeddings=False,
                                 likelihood=args.likelihood, **common)
        t_ingest = time.perf_counter() - t0
        seqatlas.annotate(None, atlas=atlas, run="tantan", progress=False)
        seqatlas.annotate(None, atlas=atlas, detect=True)
        t0 = time.perf_counter()
        probe = seqatlas.probe_icl(atlas, method="mask", **common)
        t_probe = time.perf_counter() - t0
        print(f"X:{start:,}-{start + length:,} with dnabert6-tiny, --likelihood "
              f"{args.likelihood}")
        print(f"ingest: {ingest.positions_scored:,} positions in {t_ingest:.1f} s, "
              f"{ingest.computed_tokens:,} tokens computed")
        print(f"probe icl --method mask: {probe.targets_probed:,} targets, "
              f"{probe.positions_probed:,} positions rescored "
              f"({probe.positions_probed / max(ingest.positions_scored, 1):.1%} of the region) "
              f"in {t_probe:.1f} s, {probe.computed_tokens:,} tokens computed; controls "
              f"{probe.controls}")
        print(f"probe / ingest: time {t_probe / t_ingest:.3f}x, tokens computed "
              f"{probe.computed_tokens / max(ingest.computed_tokens, 1):.3f}x (aim <= 0.5)")
        atlas_view = seqatlas.Atlas(atlas)
        _show(atlas_view.sql(KINDS_SQL), "mean gains (nats) by kind of copy, "
              "position-weighted")
        table = enrichment(atlas, by="class", params=AnomalyParams(tail="high"))
        _show(table.select(["group", "n_inside", "anomalous_inside", "odds_ratio", "q_value",
                            "probed_anomalous_inside", "mean_net_gain", "explained_fraction"]),
              "query enrichment --by class --tail high")
        regions = atlas_view.anomalies(tail="high", with_repeats=True)
        probed = regions.filter(regions["n_probed"].is_valid()) if regions.num_rows else regions
        import pyarrow.compute as pc

        probed = probed.filter(pc.greater(probed["n_probed"], 0)) if probed.num_rows else probed
        _show(probed.sort_by([("explained_fraction", "descending")]).select(
            ["seq_id", "start", "end", "n_anomalous", "peak_z", "n_probed", "net_gain",
             "explained_fraction", "explained_by_lookup", "repeat_classes"]),
            f"query anomalies --tail high --with-repeats: {probed.num_rows} of "
            f"{regions.num_rows} high-tail regions probed, largest explained fraction first")


if __name__ == "__main__":
    main()
