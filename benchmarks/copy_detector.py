"""Benchmark: the in-context copy detector's throughput, and its cost relative to ingest.

1. DNA: 2 Mb from the middle of ``hs37_chrX_70Mb.fa.gz``, tiled into ``dnabert6-tiny``'s
   windows (133 bases, the pipeline's overlap), one detector call per ingest work unit
   (as the scorer makes them), k = 12, both orientations. Prints bases/s and the fraction
   of positions with a direct or reverse-complement copy.
2. Protein: ``uniprot_20k.fa.gz`` tiled into AntiBERTy's windows (510 residues), k = 6.
3. The same run ingests a chrX slice (default 100 kb) with ``dnabert6-tiny`` in ``unmasked``
   mode in this process (``workers=0``), detector off and on, and prints the detector's
   share: its time on that slice's windows over the ingest time without it (and, noisier,
   the difference between the two ingests).

Usage: python benchmarks/copy_detector.py [--dna-mb 2] [--ingest-kb 100] [--repeats 3]
(needs ../shared/data).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from seqatlas.copy_detector import copy_columns, default_copy_k, window_copies
from seqatlas.fasta import read_fasta
from seqatlas.scoring.windows import default_overlap, tile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNIT_TOKENS = 262144  # the unmasked-mode work unit: the scorer detects copies per unit


def chrx_slice(start: int, length: int) -> bytes:
    """``length`` bases of chrX from ``start`` (0-based), original case."""
    sequence = bytearray()
    with gzip.open(DATA / "hs37_chrX_70Mb.fa.gz", "rb") as fh:
        fh.readline()
        for line in fh:
            sequence += line.rstrip()
            if len(sequence) >= start + length:
                break
    return bytes(sequence[start : start + length])


def model_windows(name: str, kind: str) -> tuple[int, int, int]:
    """The window and overlap ingest uses for an embedded model, and its tokens per window."""
    from seqatlas.checkpoints import resolve_model

    spec = resolve_model(name, kind=kind)
    tokenizer = spec.tokenizer()
    window = tokenizer.residues_per_window(spec.context_tokens)
    return window, max(default_overlap(window), tokenizer.min_overlap()), spec.context_tokens


def detector_seconds(sequences: list[bytes], window: int, overlap: int, tokens: int, k: int,
                     nucleic: bool, repeats: int) -> tuple[float, np.ndarray]:
    """Best of ``repeats`` runs: slicing windows, detecting per unit, building the columns."""
    windows = [(seq, w) for seq in sequences for w in tile(len(seq), window, overlap)]
    per_unit = max(1, UNIT_TOKENS // tokens)
    best, strands = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        found = []
        for u in range(0, len(windows), per_unit):
            unit = windows[u : u + per_unit]
            offset, strand = window_copies(
                [seq[w.start : w.end] for seq, w in unit],
                [(w.own_start - w.start, w.own_end - w.start) for _, w in unit],
                k=k, nucleic=nucleic)
            copy_columns(offset, strand)
            found.append(strand)
        best = min(best, time.perf_counter() - started)
        strands = np.concatenate(found)
    return best, strands


def describe(name: str, residues: int, seconds: float, strands: np.ndarray) -> float:
    rate = residues / seconds
    print(f"{name}: {residues:,} residues in {seconds:.3f} s = {rate:,.0f} residues/s; "
          f"{(strands == 1).mean():.2%} with a direct copy, {(strands == -1).mean():.2%} "
          f"with a reverse-complement copy")
    return rate


def ingest_seconds(fasta: Path, copy_k: int) -> float:
    import seqatlas

    atlas = Path(tempfile.mkdtemp(prefix="copy-bench-"))
    try:
        report = seqatlas.ingest(fasta, atlas=atlas / "a", model="dnabert6-tiny",
                                 likelihood="unmasked", embeddings=False, copy_k=copy_k,
                                 workers=0, progress=False)
        return report.seconds
    finally:
        shutil.rmtree(atlas, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dna-mb", type=float, default=2.0)
    parser.add_argument("--ingest-kb", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    window, overlap, tokens = model_windows("dnabert6-tiny", "dna")
    k = default_copy_k("dna")
    length = int(args.dna_mb * 1e6)
    start = 35_000_000 - length // 2  # the middle of the 70 Mb, away from N runs
    dna = chrx_slice(start, length)
    print(f"chrX:{start:,}-{start + length:,}, dnabert6-tiny windows {window} (overlap "
          f"{overlap}), k = {k}, {max(1, UNIT_TOKENS // tokens)} windows per call")
    seconds, strands = detector_seconds([dna], window, overlap, tokens, k, True, args.repeats)
    dna_rate = describe("DNA detector", length, seconds, strands)

    p_window, p_overlap, p_tokens = model_windows("antiberty", "protein")
    proteins = [r.sequence for r in read_fasta(DATA / "uniprot_20k.fa.gz", kind="protein")]
    residues = sum(len(p) for p in proteins)
    seconds, strands = detector_seconds(proteins, p_window, p_overlap, p_tokens,
                                        default_copy_k("protein"), False, args.repeats)
    print(f"{len(proteins):,} UniProt proteins, AntiBERTy windows {p_window} (overlap "
          f"{p_overlap}), k = {default_copy_k('protein')}")
    describe("protein detector", residues, seconds, strands)

    slice_length = int(args.ingest_kb * 1e3)
    piece = dna[:slice_length]
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "slice.fa"
        fasta.write_text(">X\n" + piece.decode() + "\n")
        ingest_seconds(fasta, 0)  # warm-up: model load, caches
        without = ingest_seconds(fasta, 0)
        with_copies = ingest_seconds(fasta, k)
    detect, _ = detector_seconds([piece], window, overlap, tokens, k, True, args.repeats)
    print(f"dnabert6-tiny unmasked ingest of {slice_length:,} bases (workers=0): "
          f"{without:.2f} s without copies ({slice_length / without:,.0f} bases/s), "
          f"{with_copies:.2f} s with copies (k = {k})")
    print(f"detector on the same windows: {detect * 1e3:.1f} ms = {detect / without:.2%} of "
          f"the ingest time (difference between the two ingests: "
          f"{(with_copies - without) / without:+.2%})")
    print(f"at {dna_rate:,.0f} bases/s the detector costs "
          f"{slice_length / without / dna_rate:.2%} of unmasked ingest time")


if __name__ == "__main__":
    main()
