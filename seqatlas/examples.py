"""The bundled demo data and ``demo``: the whole job, end to end, on the embedded models.

``demo`` runs every stage of seqatlas on real sequences shipped with the package, in one
process (no Ray start-up) and in about a minute on 2 idle CPU cores:

1. ``ingest``: the 10 bundled proteins with AntiBERTy, and 3 kb of human chrX held out from
   dnabert6-tiny's training with dnabert6-tiny, both in fast mode with float16 embeddings;
2. ``annotate``: the DNA's in-context copies (``--detect``) and its tandem repeats
   (``--run tantan`` when tantan is installed, else the bundled output of that same run);
3. ``probe icl``: every in-context copy of the DNA rescored with its partner masked and
   with a matched control region masked;
4. anomalous regions and their enrichment in repeat classes and at in-context copies, with
   the share of their excess that the probed look-up explains;
5. a Flat embedding index, a k-mer lookup in it, and identity vs context of neighbours;
6. ``probe doubling`` (S+S against the same-composition S+C) on four antibody domains and
   their shuffles with AntiBERTy, written as Parquet;
7. the HTML report of both atlases and the doubling table.

Every stage's output (row counts, file paths) and wall time go into the returned summary.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import pyarrow.compute as pc

from seqatlas.atlas import Atlas
from seqatlas.fasta import read_fasta
from seqatlas.html_report import report
from seqatlas.index.build import build_index
from seqatlas.index.store import index_dir
from seqatlas.probe import probe_doubling, probe_icl
from seqatlas.progress import progress_mode
from seqatlas.query import AnomalyParams
from seqatlas.query.per_sequence import sequence_summary
from seqatlas.repeats import annotate
from seqatlas.scoring.pipeline import ingest

DEMO_FASTA = "demo_proteins.fa"
DEMO_DNA = "demo_chrx.fa"
DEMO_TANTAN = "demo_chrx.tantan-f4.tsv"  # `tantan -f4 demo_chrx.fa` (tantan 40)

# Settings of the demo's stages. Fast mode: a likelihood for every residue from ~15% masked
# passes (7 per window for AntiBERTy, 40 for 6-mer DNABERT) instead of one pass per
# residue; the exact PLL is not the point here, and exact AntiBERTy took 55 s of scoring
# against 3.6 s (2 cores). The DNA's forward strand only: probe icl rescores the
# forward strand, so its gains and the anomalies' excess (logp, not the strand mean) agree.
PROTEINS = {"model": "antiberty", "likelihood": "fast"}
DNA = {"model": "dnabert6-tiny", "likelihood": "fast", "strands": "forward",
       "embeddings": True}
ANOMALIES = {"z": 2.5, "min_length": 2}  # as the README's examples: the 3 kb has few at 3
KNN_KMERS = ("ATACAC", "GCTGGC")  # a unit of the AC-rich tandem repeat; unique sequence
KNN_K = 5
IDENTITY = {"sample": 500, "k": 10}
# two antibodies' VH and VL domains (about 3.5 s each, with its shuffle, on 2 cores)
DOUBLING_IDS = ("abituzumab|H", "abituzumab|L", "abrilumab|H", "abrilumab|L")
DOUBLING = {"model": "antiberty", "likelihood": "fast", "method": "mask", "shuffle": True,
            "seed": 0}


def demo_fasta() -> Path:
    """Path of the bundled demo proteins (8 antibody domains, 2 ankyrin-repeat proteins)."""
    return _data(DEMO_FASTA)


def demo_dna() -> Path:
    """Path of the bundled demo DNA: 3 kb of human chrX (62,844,500-62,847,500, GRCh37),
    inside the region held out from dnabert6-tiny's training, with tandem repeats."""
    return _data(DEMO_DNA)


def demo_tantan() -> Path:
    """Path of tantan's tandem repeats of :func:`demo_dna`: the output of ``tantan -f4`` on
    it (tantan 40, the arguments ``annotate --run tantan`` uses for DNA), imported by the
    demo when tantan is not installed."""
    return _data(DEMO_TANTAN)


def _data(name: str) -> Path:
    return Path(str(resources.files("seqatlas") / "data" / name))


def demo(*, atlas: str | Path | None = None, workers: int | None = 0,
         progress: bool | str = True) -> dict:
    """Run the whole job on the bundled data (module docstring) into the directory ``atlas``
    (default: a new temporary directory): the atlases ``proteins`` and ``dna``, the doubling
    table ``doubling.parquet`` (of the sequences in ``doubling_proteins.fa``) and the report
    ``report.html``. ``workers=0`` (the default) scores in this process; None or N uses Ray
    actors. Returns the summary: each stage's results, row counts, paths and seconds
    (``stages``: seconds per stage; ``seconds``: in all); JSON-serialisable."""
    root = Path(atlas) if atlas else Path(tempfile.mkdtemp(prefix="seqatlas-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    proteins, dna = root / "proteins", root / "dna"
    summary: dict = {"atlas": str(root)}
    stages = [  # (name, summary key, what it runs)
        ("ingest proteins", "proteins",
         lambda: _ingest(demo_fasta(), proteins, PROTEINS, workers, progress)),
        ("ingest dna", "dna", lambda: _ingest(demo_dna(), dna, DNA, workers, progress)),
        ("repeats", "repeats", lambda: _repeats(dna, progress)),
        # before the queries, so anomalous regions and enrichment carry the look-up's gains
        ("probe icl", "probe_icl", lambda: _probe_icl(dna, workers, progress)),
        ("anomalies", "anomalies", lambda: _anomalies(dna)),
        ("enrichment", "enrichment", lambda: _enrichment(dna)),
        ("index", "index", lambda: _index(dna)),
        ("knn", "knn", lambda: _knn(dna)),
        ("identity", "identity", lambda: _identity(dna)),
        ("probe doubling", "doubling", lambda: _doubling(root, workers, progress)),
        ("report", "report",
         lambda: _report(root, [dna, proteins], summary["doubling"]["output"])),
    ]
    show = progress_mode(progress) != "none"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name, key, run in stages:
        start = time.perf_counter()
        summary[key] = run()
        summary[key]["seconds"] = seconds[name] = round(time.perf_counter() - start, 2)
        if show:
            print(f"demo: {name} done in {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    summary["stages"] = seconds
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return _plain(summary)


def _ingest(fasta: Path, path: Path, settings: dict, workers, progress) -> dict:
    report = ingest(fasta, atlas=path, workers=workers, progress=progress, **settings)
    result = Atlas(path)
    return {"atlas": str(path), "report": report.as_dict(), "info": result.summary(),
            "sequences": sequence_summary(result)}


def _rows(path: Path, table: str) -> int:
    return Atlas(path).summary()["tables"][table]["rows"]


def _repeats(dna: Path, progress) -> dict:
    """In-context copies, then tantan's tandem repeats: a live run when tantan is on PATH,
    else the bundled output of the same run."""
    copies = annotate(atlas=dna, detect=True)
    if shutil.which("tantan") is not None:
        tandem, source = annotate(atlas=dna, run="tantan", progress=progress), "tantan"
    else:
        tandem, source = annotate(demo_tantan(), atlas=dna), "bundled"
    counts = Atlas(dna).sql("SELECT class, source, count(*) AS repeats FROM repeats "
                            "GROUP BY ALL ORDER BY ALL").to_pylist()
    return {"copies": copies, "tandem": tandem, "tandem_source": source,
            "tandem_file": str(demo_tantan()) if source == "bundled" else None,
            "by_class": counts, "rows": _rows(dna, "repeats")}


def _probe_icl(dna: Path, workers, progress) -> dict:
    """Every in-context copy of the DNA (``annotate --detect``'s intervals), rescored with
    its partner masked and with a matched control region masked; ``gains`` per copy strand
    and ``mean`` over all probed positions."""
    report = probe_icl(dna, workers=workers, progress=progress)
    (mean,) = Atlas(dna).sql(
        "SELECT count(DISTINCT (seq_id, target_start)) AS targets, count(*) AS positions, "
        "avg(icl_gain) AS icl_gain, avg(control_gain) AS control_gain, "
        "avg(net_gain) AS net_gain FROM ablations").to_pylist()
    return {**report.as_dict(), "mean": mean, "rows": _rows(dna, "ablations")}


REGION_COLUMNS = ("seq_id", "start", "end", "tail", "n_anomalous", "peak_z", "copy_fraction",
                  "n_probed", "net_gain", "explained_fraction", "repeat_classes")


def _anomalies(dna: Path) -> dict:
    regions = Atlas(dna).anomalies(with_repeats=True, **ANOMALIES).to_pylist()
    tails: dict[str, int] = {}
    for region in regions:
        tails[region["tail"]] = tails.get(region["tail"], 0) + 1
    top = sorted(regions, key=lambda r: (-abs(r["peak_z"]), r["seq_id"], r["start"]))[:5]
    return {"params": dict(ANOMALIES), "regions": len(regions), "by_tail": tails,
            "with_copy": sum(bool(r["explained_by_copy"]) for r in regions),
            "top": [{k: r[k] for k in REGION_COLUMNS} for r in top]}


ENRICHMENT_COLUMNS = ("group", "n_inside", "anomalous_inside", "rate_inside", "rate_outside",
                      "odds_ratio", "ci_low", "ci_high", "p_value", "q_value",
                      "probed_anomalous_inside", "mean_net_gain", "explained_fraction")


def _enrichment(dna: Path) -> dict:
    atlas = Atlas(dna)
    result = {"params": dict(ANOMALIES)}
    for by in ("class", "copy"):
        rows = atlas.enrichment(by=by, **ANOMALIES).to_pylist()
        result[by] = sorted(({k: r[k] for k in ENRICHMENT_COLUMNS} for r in rows),
                            key=lambda r: (r["p_value"] is None, r["p_value"] or 0,
                                           r["group"]))
    return result


def _index(dna: Path) -> dict:
    meta = build_index(dna, type="flat", metric="cosine")
    keep = ("name", "type", "factory", "metric", "column", "dim", "ntotal", "bytes",
            "bytes_per_vector", "build_seconds")
    return {**{k: meta.get(k) for k in keep},
            "recall_at_10": (meta.get("search") or {}).get("recall_at_10"),
            "path": str(index_dir(Atlas(dna), meta["name"]))}


def _knn(dna: Path) -> dict:
    hits = Atlas(dna).knn(kmer=list(KNN_KMERS), k=KNN_K).to_pylist()
    return {"queries": list(KNN_KMERS), "k": KNN_K, "rows": len(hits), "hits": hits}


def _identity(dna: Path) -> dict:
    rows = Atlas(dna).identity(**IDENTITY).to_pylist()  # opened after the index: it is used
    return {**IDENTITY, "rows": rows}


def _doubling(root: Path, workers, progress) -> dict:
    fasta, output = root / "doubling_proteins.fa", root / "doubling.parquet"
    records = {r.id: r for r in read_fasta(demo_fasta(), kind="protein")}
    with open(fasta, "w") as out:
        for seq_id in DOUBLING_IDS:
            record = records[seq_id]
            out.write(f">{record.id} {record.description}".rstrip() + "\n")
            residues = record.sequence.decode("ascii")
            out.write("".join(residues[i:i + 60] + "\n" for i in range(0, len(residues), 60)))
    table = probe_doubling(fasta, output=output, workers=workers, progress=progress,
                           **DOUBLING)
    gains = ("icl_gain", "control_gain", "net_gain", "doubling_gain")
    means = {}
    for variant in sorted(set(table["variant"].to_pylist())):
        rows = table.filter(pc.equal(table["variant"], variant))
        means[variant] = {"sequences": rows.num_rows,
                          **{g: pc.mean(rows[g]).as_py() for g in gains}}
    return {"fasta": str(fasta), "output": str(output), "settings": dict(DOUBLING),
            "rows": table.num_rows, "mean": means,
            "table": table.select(["seq_id", "variant", "length", *gains]).to_pylist()}


def _report(root: Path, atlases: list[Path], doubling: str) -> dict:
    result = report([str(a) for a in atlases], output=root / "report.html", doubling=doubling,
                    params=AnomalyParams(**ANOMALIES))
    return {"output": str(result["output"]), "bytes": result["bytes"],
            "atlases": result.get("atlases")}  # per atlas: the sections shown, their seconds


def _plain(value):
    """``value`` with paths as text and nan/inf as None, so ``json.dumps`` writes strict
    JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
