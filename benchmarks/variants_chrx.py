"""Benchmark: variant effects on held-out human chrX with ``dnabert6-tiny``.

1. Ingest X:62,000,000-63,000,000 (1 Mb of ``hs37_chrX_70Mb.fa.gz``) in fast mode with the
   per-position distributions stored (float32, the default), embeddings off; ``annotate
   --run tantan`` and ``--detect``.
2. ``variants scan`` of the whole region (every possible SNV, 3 per base) from the stored
   distributions: variants/s, against scoring a random sample of the same SNVs by running
   the model once per site, as GPN's ``run_vep`` does (one masked pass per site and strand,
   the site's three alternatives read from it, which favours the baseline); the ratio. The
   sampled sites' LLRs from both ways must agree (fast vs exact passes: their correlation is
   printed).
3. ``variants score --lookup`` on 1,000 random SNVs at in-context copies: mean look-up shift
   by copy class (inside a tantan tandem repeat, interspersed direct copy, reverse-complement
   copy), with the control's share (mean |control_shift| / mean |icl_shift|).
4. Bytes per position the distributions add: the positions table with float32, float16 and
   no distributions, for DNA (a 100 kb slice, both strands, unmasked) and proteins (20
   antibody domains of jain2017 with AntiBERTy, fast).

Usage: python benchmarks/variants_chrx.py [--start-mb 62] [--length-kb 1000]
       [--sample-sites 300] [--lookup-snvs 1000] [--workdir DIR]
(needs ../shared/data and tantan on PATH).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_knn import DATA, write_slice  # noqa: E402 (the chrX slice, as index_knn takes it)


def _positions_bytes(atlas) -> tuple[int, int]:
    import seqatlas

    table = seqatlas.info(atlas)["tables"]["positions"]
    return table["bytes"], table["rows"]


def _per_site_baseline(atlas, seq_id: str, sites: np.ndarray) -> tuple[float, np.ndarray]:
    """One exact masked pass per site (and strand), GPN's per-variant approach; seconds and
    the sites' (n, 4) forward distributions."""
    from seqatlas.checkpoints.recorded import atlas_model_spec
    from seqatlas.scoring.ablation import RescoreTask
    from seqatlas.scoring.scorer import Scorer
    from seqatlas.checkpoints import load_model
    from seqatlas.probe.icl import read_sequences
    from seqatlas.store import AtlasReader

    reader = AtlasReader(atlas)
    spec = atlas_model_spec(reader)
    scorer = Scorer(load_model(spec), likelihood="exact", embeddings=False,
                    layer=[spec.num_layers], distributions="float32")
    seq = read_sequences(reader, [seq_id], "ACGT")[seq_id]
    tasks = []
    for pos in sites:
        ws = int(seq.window_start[pos])
        we = min(ws + (reader.manifest.scoring.window or 510), len(seq.residues))
        tasks.append(RescoreTask(seq.residues[ws:we], 0, we - ws,
                                 np.array([pos - ws], dtype=np.int64)))
    t0 = time.perf_counter()
    values = [scorer.rescore_letters([task])[0][0] for task in tasks]  # one site at a time
    return time.perf_counter() - t0, np.array(values)


def _scan_step(atlas, seq_id: str, sample: int) -> None:
    from seqatlas.variants.scan import scan_variants

    t0 = time.perf_counter()
    scan = scan_variants(atlas, seq_id=seq_id)
    t_scan = time.perf_counter() - t0
    rate = scan.num_rows / t_scan
    print(f"variants scan: {scan.num_rows:,} SNVs in {t_scan:.2f} s = {rate:,.0f} variants/s")
    positions = np.unique(scan["pos"].to_numpy())
    rng = np.random.default_rng(0)
    sites = np.sort(rng.choice(positions, size=min(sample, len(positions)), replace=False))
    seconds, dists = _per_site_baseline(atlas, seq_id, sites)
    baseline = 3 * len(sites) / seconds
    print(f"per-site model runs (GPN's approach, exact, forward strand only): "
          f"{3 * len(sites):,} SNVs at {len(sites)} sites in {seconds:.1f} s = "
          f"{baseline:,.1f} variants/s")
    print(f"scan / per-site: {rate / baseline:,.0f}x the variants per second")
    import pyarrow.compute as pc

    stored = scan.filter(pc.is_in(scan["pos"], value_set=__import__("pyarrow").array(sites)))
    letters = "ACGT"
    ref = {int(p): r for p, r in zip(stored["pos"].to_pylist(), stored["ref"].to_pylist())}
    mine, theirs = [], []
    for row in stored.to_pylist():
        k = int(np.searchsorted(sites, row["pos"]))
        d = dists[k]
        theirs.append(d[letters.index(row["alt"])] - d[letters.index(ref[row["pos"]])])
        mine.append(row["llr_fwd"])
    from scipy.stats import spearmanr

    print(f"sampled SNVs: Spearman of the stored (fast-mode) forward LLR against the per-site "
          f"exact LLR: {spearmanr(mine, theirs)[0]:.4f}")


LOOKUP_SQL = """
    SELECT CASE WHEN copy_strand = '-' THEN 'reverse-complement copy'
                WHEN repeat_classes LIKE '%Tandem_repeat%' THEN 'in a tandem repeat (tantan)'
                ELSE 'interspersed direct copy' END AS copy_class,
           count(*) AS snvs, count(lookup_shift) AS with_control,
           avg(llr) AS mean_llr, avg(icl_shift) AS icl_shift, avg(control_shift) AS control_shift,
           avg(lookup_shift) AS lookup_shift, avg(abs(lookup_shift)) AS mean_abs_lookup_shift,
           avg(abs(control_shift)) / avg(abs(icl_shift)) AS control_share
    FROM scores WHERE problem IS NULL GROUP BY 1 ORDER BY 1"""


def _lookup_step(atlas, seq_id: str, count: int, workdir: Path) -> None:
    import duckdb

    import seqatlas

    copies = seqatlas.Atlas(atlas).sql(
        "SELECT pos, ref FROM positions WHERE copy_offset IS NOT NULL AND ref IN "
        "('A','C','G','T') ORDER BY pos")
    rng = np.random.default_rng(1)
    chosen = np.sort(rng.choice(copies.num_rows, size=min(count, copies.num_rows),
                                replace=False))
    vcf = workdir / "copies.vcf"
    with open(vcf, "w") as out:
        out.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
        for k in chosen:
            pos, ref = copies["pos"][int(k)].as_py(), copies["ref"][int(k)].as_py()
            alt = rng.choice([b for b in "ACGT" if b != ref])
            out.write(f"{seq_id}\t{pos + 1}\t.\t{ref}\t{alt}\n")
    t0 = time.perf_counter()
    result = seqatlas.score_variants(vcf, atlas=atlas, lookup=True, progress=False)
    seconds = time.perf_counter() - t0
    print(f"\nvariants score --lookup: {result.scored:,} of {result.variants:,} SNVs at "
          f"in-context copies in {seconds:.1f} s")
    scores = result.table  # noqa: F841 (read by the SQL below)
    table = duckdb.sql(LOOKUP_SQL).to_arrow_table()
    print("\t".join(table.column_names))
    for row in table.to_pylist():
        print("\t".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))


def _bytes_step(workdir: Path) -> None:
    import seqatlas

    dna = workdir / "bytes_dna.fa"
    write_slice(dna, 40_000_000, 100_000)
    protein = workdir / "bytes_protein.fa"
    with gzip.open(DATA / "jain2017_antibodies.fa.gz", "rt") as fh:
        records = fh.read().split(">")[1:21]
    protein.write_text("".join(">" + r for r in records))
    print("\nbytes per position of the positions table (zstd Parquet)")
    for name, fasta, options in (
            ("DNA, unmasked, both strands", dna,
             {"model": "dnabert6-tiny", "likelihood": "unmasked", "strands": "both"}),
            ("protein, fast", protein, {"model": "antiberty", "likelihood": "fast"})):
        sizes = {}
        for dtype in ("none", "float16", "float32"):
            atlas = workdir / f"bytes-{name.split(',')[0]}-{dtype}"
            seqatlas.ingest(fasta, atlas=atlas, embeddings=False, distributions=dtype,
                            workers=0, progress=False, **options)
            stored, rows = _positions_bytes(atlas)
            sizes[dtype] = stored / rows
        print(f"{name}: none {sizes['none']:.1f} B, float16 {sizes['float16']:.1f} B "
              f"(+{sizes['float16'] - sizes['none']:.1f}), float32 {sizes['float32']:.1f} B "
              f"(+{sizes['float32'] - sizes['none']:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-mb", type=float, default=62)
    parser.add_argument("--length-kb", type=float, default=1000)
    parser.add_argument("--sample-sites", type=int, default=300)
    parser.add_argument("--lookup-snvs", type=int, default=1000)
    parser.add_argument("--workdir", help="keep the atlases here (a re-run reuses them)")
    args = parser.parse_args()
    if not (DATA / "hs37_chrX_70Mb.fa.gz").exists():
        raise SystemExit("this benchmark needs ../shared/data")
    if shutil.which("tantan") is None:
        raise SystemExit("this benchmark needs tantan on PATH (apt-get install tantan)")
    import seqatlas

    start, length = int(args.start_mb * 1e6), int(args.length_kb * 1e3)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir) if args.workdir else Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        fasta = workdir / "region.fa"
        write_slice(fasta, start, length)
        atlas = workdir / "atlas"
        t0 = time.perf_counter()
        report = seqatlas.ingest(fasta, atlas=atlas, model="dnabert6-tiny", embeddings=False,
                                 likelihood="fast", workers=0, progress=False)
        print(f"X:{start:,}-{start + length:,}, dnabert6-tiny fast: ingest "
              f"{report.positions_scored:,} positions in {time.perf_counter() - t0:.1f} s "
              "(0 s: reused from --workdir)")
        seqatlas.annotate(None, atlas=atlas, run="tantan", progress=False)
        seqatlas.annotate(None, atlas=atlas, detect=True)
        seq_id = f"X:{start}-{start + length}"
        _scan_step(atlas, seq_id, args.sample_sites)
        _lookup_step(atlas, seq_id, args.lookup_snvs, workdir)
        _bytes_step(workdir)


if __name__ == "__main__":
    main()
