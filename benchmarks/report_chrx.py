"""Benchmark: `seqatlas report` on a chromosome-scale atlas (70 Mb of human chrX).

Builds the atlas of benchmarks/repeat_join.py (synthetic logp at the real chrX letters, or
``--atlas`` an ingest of chrX, copied), imports the real tantan repeats of
``../shared/data``, then times each report section and prints the file size against the
10 MB budget. The baseline in the same run is the time of ``query anomalies`` plus ``query
enrichment`` alone (the tables the report starts from), so the ratio says what drawing and
inlining the plots cost on top.

Usage: python benchmarks/report_chrx.py [--atlas DIR] [--limit-mb 70] [--z 2.5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0].parent / "shared" / "data"
BUDGET_BYTES = 10 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atlas", type=Path, help="an ingested chrX atlas (copied)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit-mb", type=float, default=70.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--z", type=float, default=2.5,
                        help="anomaly threshold (2.5 gives the synthetic scores ~100 regions, "
                        "so the report draws its 5 tracks)")
    args = parser.parse_args()
    if not (args.data / "hs37_chrX_70Mb.fa.gz").exists():
        raise SystemExit(f"needs {args.data}/hs37_chrX_70Mb.fa.gz")
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from repeat_join import synthetic_atlas

    import seqatlas
    from seqatlas.html_report import report
    from seqatlas.query import AnomalyParams, anomalies, enrichment

    work = args.workdir or Path(tempfile.mkdtemp(prefix="seqatlas-report-"))
    atlas = work / "atlas"
    shutil.rmtree(atlas, ignore_errors=True)
    start = time.perf_counter()
    if args.atlas:
        shutil.copytree(args.atlas, atlas)
    else:
        synthetic_atlas(atlas, args.data / "hs37_chrX_70Mb.fa.gz", int(args.limit_mb * 1e6))
    seqatlas.annotate(args.data / "hs37_chrX_70Mb.tantan-f4.tsv.gz", atlas=atlas,
                      format="tantan-f4")
    summary = seqatlas.info(atlas)
    print(f"atlas: {summary['tables']['positions']['rows']:,} positions, "
          f"{summary['tables']['repeats']['rows']:,} repeats, built in "
          f"{time.perf_counter() - start:.1f} s", flush=True)

    start = time.perf_counter()
    params = AnomalyParams(z=args.z)
    regions = anomalies(atlas, params=params).num_rows
    groups = enrichment(atlas, params=params).num_rows
    baseline = time.perf_counter() - start
    print(f"baseline: query anomalies ({regions:,} regions) + enrichment ({groups} groups): "
          f"{baseline:.1f} s", flush=True)

    output = work / "report.html"
    start = time.perf_counter()
    result = report(atlas, output=output, params=params)
    seconds = time.perf_counter() - start
    sections = next(iter(result["atlases"].values()))
    for name, took in sections["seconds"].items():
        print(f"  section {name}: {took:.2f} s")
    size = output.stat().st_size
    print(f"report: {seconds:.1f} s ({seconds / baseline:.1f}x the baseline), "
          f"{size / 2**20:.2f} MB ({size / BUDGET_BYTES:.0%} of the 10 MB budget), "
          f"sections: {', '.join(sections['sections'])}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
