"""GPU check: bf16 ingests of dnabert6-tiny on CUDA against a float32 CPU reference, their
speed and model FLOP utilisation, and a FAISS index built on the GPU against one built on
the CPU. One command, under 5 minutes with the model load:

    python benchmarks/gpu_check.py [--data ../shared/data] [--quick] [--out DIR]

1. Ingests (``workers=0``, in this process) in ``exact`` (~2 kb: one pass per base),
   ``fast`` (~20 kb) and ``unmasked`` (~200 kb, with embeddings) of X:62,000,000+ of
   ``hs37_chrX_70Mb.fa.gz`` (the model's held-out region) when ``--data`` has it, else of a
   deterministic generated DNA sequence (random stretches, tandem repeats, mutated copies).
   On CUDA in bfloat16; on a CPU in float32.
2. positions/s of each, model FLOPs per base (counted exactly, ``flops.flops_per_base``) and
   model FLOP utilisation against the measured dense matmul rate of the same device and
   dtype (``flops.matmul_rate``: bf16 on the GPU, fp32 on a CPU).
3. CUDA only: smaller records of each mode ingested on the GPU (bf16) and in a subprocess
   that sees no GPU (``CUDA_VISIBLE_DEVICES=""``, float32); per-position ``logp`` and
   ``logp_unmasked`` must agree within the tolerances below, else exit 1.
4. An IVF-Flat index of the unmasked atlas's token embeddings built on the CPU and, when
   FAISS has GPUs, on the GPU: seconds, and recall@10 of each against exact search.

Without CUDA every CUDA part is reported ``skipped: <reason>`` and the CPU parts run
(``--quick``: small inputs, about a minute on 2 cores). The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import flops_per_base, loaded_model, matmul_rate, utilisation  # noqa: E402

# -- tolerances: GPU bfloat16 against CPU float32, per position ---------------------------------
# bf16 keeps 8 significand bits (relative rounding 2^-9 ~ 0.002); autocast runs the matmuls in
# bf16 with float32 accumulation and the softmax / letter marginalisation in float32, so the
# logits carry errors of ~1e-2 relative after 4 layers. Simulated on a CPU (the same autocast
# on torch's CPU kernels) over X:62,000,000+ (20 kb unmasked, 3 kb fast, 400 b exact) this
# gave max |dlogp| 0.074 nats, mean 0.003 (logp_unmasked) to 0.009 (masked logp), Spearman
# >= 0.9994. GPU kernels (flash attention, other GEMM tilings and reduction orders) round
# differently, so the limits leave ~3x room. A real fault (wrong positions, wrong windows,
# fp16 overflow, a mis-cast head) moves logp by ~1 nat (its spread) and fails all three.
MAX_ABS_DLOGP = 0.25  # nats, any one position
MEAN_ABS_DLOGP = 0.03  # nats, mean over the positions compared
MIN_SPEARMAN = 0.995  # rank correlation of the per-position values
MAX_NULL_MISMATCH = 0  # positions null on one device and not on the other
# an index trained on the GPU (other k-means) is calibrated to the same recall target: its
# recall@10 against exact search may fall at most this far below the CPU-built one's
INDEX_RECALL_SLACK = 0.05

MODEL = "dnabert6-tiny"
MODES = ("exact", "fast", "unmasked")
REGION = ("X", 62_000_000)  # held out of dnabert6-tiny's training (its MODEL_CARD.md)
CHRX = "hs37_chrX_70Mb.fa.gz"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# bases per mode: the timed ingests; the records compared with the CPU reference (CUDA only)
SIZES = {"exact": 2_000, "fast": 20_000, "unmasked": 200_000}
REFERENCE_SIZES = {"exact": 2_000, "fast": 5_000, "unmasked": 20_000}
QUICK_SIZES = {"exact": 150, "fast": 400, "unmasked": 5_000}
# FLOPs per base are counted on at most this many bases of each mode's record
FLOP_SAMPLE = {"exact": 2_000, "fast": 5_000, "unmasked": 20_000}
QUICK_FLOP_SAMPLE = {"exact": 150, "fast": 400, "unmasked": 2_000}
REFERENCE_TIMEOUT_S = 200
INDEX_QUERIES = 500
CUDA_PARTS = ("gpu_ingest", "gpu_mfu", "bf16_vs_fp32", "gpu_index")


# -- inputs ---------------------------------------------------------------------------------------

def read_region(path: Path, start: int, length: int) -> tuple[str, str]:
    """``(record id, length bases from 0-based start)`` of the first record of a gzipped FASTA
    with fixed-width lines (lines before the region are skipped, not parsed)."""
    with gzip.open(path, "rt") as fh:
        record = fh.readline()[1:].split()[0]
        width = len(fh.readline().strip())
    with gzip.open(path, "rt") as fh:
        fh.readline()
        for _ in range(start // width):
            fh.readline()
        chunks, total = [], 0
        need = length + start % width
        while total < need:
            line = fh.readline()
            if not line or line.startswith(">"):
                break
            chunks.append(line.strip())
            total += len(chunks[-1])
    bases = "".join(chunks)[start % width:][:length]
    if len(bases) < length:
        raise SystemExit(f"{path} holds only {len(bases)} bases from {start}, not {length}")
    return record, bases.upper()


def generated_dna(length: int, seed: int = 0) -> str:
    """A deterministic DNA sequence with some structure: random stretches (41% GC), tandem
    repeats, mutated copies of earlier stretches (forward and reverse complement), poly-A."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    complement = bytes.maketrans(b"ACGT", b"TGCA")
    out = bytearray()
    while len(out) < length:
        kind = rng.choice(4, p=[0.5, 0.2, 0.2, 0.1])
        size = int(rng.integers(50, 600))
        if kind == 0 or len(out) < 1000:
            out += letters[rng.choice(4, size, p=[0.295, 0.205, 0.205, 0.295])].tobytes()
        elif kind == 1:
            unit = letters[rng.integers(0, 4, int(rng.integers(1, 40)))].tobytes()
            out += (unit * (size // len(unit) + 1))[:size]
        elif kind == 2:
            start = int(rng.integers(0, len(out) - size)) if len(out) > size else 0
            copy = bytearray(out[start:start + size])
            if rng.random() < 0.5:
                copy = bytearray(bytes(copy).translate(complement)[::-1])
            for i in np.nonzero(rng.random(len(copy)) < 0.03)[0]:
                copy[i] = letters[rng.integers(0, 4)]
            out += copy
        else:
            out += b"A" * int(rng.integers(10, 40))
    return out[:length].decode()


def write_fasta(path: Path, records: list[tuple[str, str, str]]) -> Path:
    """``records``: (id, description, bases), written 70 bases a line."""
    with open(path, "w") as fh:
        for rid, description, bases in records:
            fh.write(f">{rid} {description}\n")
            for i in range(0, len(bases), 70):
                fh.write(bases[i:i + 70] + "\n")
    return path


def make_inputs(data: Path, sizes: dict, reference_sizes: dict | None, where: Path
                ) -> tuple[dict, dict, dict, str]:
    """``(fasta per mode, reference fasta per mode, bases per mode, source)``. Each mode gets
    its own stretch of one sequence; a mode's reference record is the start of its stretch as
    a record of its own, so both devices score exactly the same windows. A reference that is
    the whole record reuses the timed input."""
    total = sum(sizes.values())
    chrx = data / CHRX
    if chrx.exists():
        record, sequence = read_region(chrx, REGION[1], total)
        origin, source = REGION[1], f"{chrx} {record}:{REGION[1]:,}-{REGION[1] + total:,}"
    else:
        record, sequence, origin = "generated", generated_dna(total), 0
        # the model knows no such sequence: its likelihoods are still what is compared
        warnings.filterwarnings("ignore", message=".*may be out of domain.*")
        source = f"generated DNA ({total:,} bases, seed 0; {chrx} not found)"
    where.mkdir(parents=True, exist_ok=True)
    fastas, references, bases, at = {}, {}, {}, 0
    for mode in MODES:
        stretch = sequence[at:at + sizes[mode]]
        bases[mode] = stretch
        fastas[mode] = write_fasta(where / f"{mode}.fa", [
            (f"{mode}_{record}_{origin + at}", f"{record}:{origin + at}-{origin + at + len(stretch)}",
             stretch)])
        if reference_sizes is not None:
            n = min(reference_sizes[mode], len(stretch))
            references[mode] = fastas[mode] if n == len(stretch) else write_fasta(
                where / f"{mode}_reference.fa",
                [(f"ref_{mode}_{record}_{origin + at}",
                  f"{record}:{origin + at}-{origin + at + n}", stretch[:n])])
        at += sizes[mode]
    return fastas, references, bases, source


# -- ingests --------------------------------------------------------------------------------------

def ingest(fasta: Path, atlas: Path, mode: str, precision: str) -> dict:
    """One ingest as the check runs it; what it did, timed."""
    import seqatlas

    shutil.rmtree(atlas, ignore_errors=True)
    started = time.perf_counter()
    report = seqatlas.ingest(fasta, atlas=atlas, model=MODEL, likelihood=mode,
                             embeddings=mode == "unmasked", workers=0, progress=False,
                             precision=precision)
    wall = time.perf_counter() - started
    scoring = json.loads((atlas / "atlas.json").read_text()).get("scoring", {})
    # how the scorer ran (precision, device, batch size, threads): sets of the values seen
    engine = {key: sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
              for key, value in (getattr(report, "engine", None) or {}).items()}
    return {"atlas": str(atlas), "positions": report.positions_scored,
            "seconds": round(report.seconds, 4), "wall_s": round(wall, 4),
            "positions_per_s": report.positions_scored / report.seconds if report.seconds else 0.0,
            "padding_efficiency": round(report.padding_efficiency, 4),
            "precision_asked": precision,
            "precision_recorded": scoring.get("precision") or "float32",
            "engine": engine}


def reference_main(spec_path: Path) -> int:
    """The float32 CPU reference (run in a subprocess with CUDA_VISIBLE_DEVICES="")."""
    import torch

    if torch.cuda.is_available():
        print("reference: torch still sees a GPU; CUDA_VISIBLE_DEVICES was not honoured",
              file=sys.stderr)
        return 2
    spec = json.loads(spec_path.read_text())
    done = {}
    for mode, item in spec.items():
        done[mode] = ingest(Path(item["fasta"]), Path(item["atlas"]), mode, "float32")
        print(f"reference {mode}: {done[mode]['positions']:,} positions in "
              f"{done[mode]['seconds']:.1f} s ({torch.get_num_threads()} threads)", flush=True)
    print("REFERENCE " + json.dumps({"threads": torch.get_num_threads(), "modes": done}),
          flush=True)
    return 0


def run_reference(work: Path, references: dict) -> dict:
    spec = {mode: {"fasta": str(path), "atlas": str(work / f"cpu_reference_{mode}")}
            for mode, path in references.items()}
    spec_path = work / "reference.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--reference",
                           str(spec_path)], env=env, capture_output=True, text=True,
                          timeout=REFERENCE_TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REFERENCE ")]
    for line in done.stdout.splitlines():
        if not line.startswith("REFERENCE "):
            print(f"  {line}")
    if done.returncode or not lines:
        raise RuntimeError(f"the CPU reference exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1][len("REFERENCE "):])


# -- comparisons ----------------------------------------------------------------------------------

def positions(atlas: Path):
    import seqatlas

    table = seqatlas.Atlas(atlas).positions(columns=["seq_id", "pos", "logp", "logp_unmasked"])
    return table.sort_by([("seq_id", "ascending"), ("pos", "ascending")])


def compare(test_atlas: Path, reference_atlas: Path, mode: str) -> dict:
    """Per-position agreement of the test device's atlas with the reference's."""
    from scipy.stats import spearmanr

    test, ref = positions(test_atlas), positions(reference_atlas)
    if test.num_rows != ref.num_rows or not test["pos"].equals(ref["pos"]) or \
            not test["seq_id"].equals(ref["seq_id"]):
        return {"ok": False, "problems": [f"{mode}: the atlases hold different positions "
                                          f"({test.num_rows:,} vs {ref.num_rows:,} rows)"]}
    result, problems = {"positions": test.num_rows, "columns": {}}, []
    columns = ["logp_unmasked"] if mode == "unmasked" else ["logp", "logp_unmasked"]
    for column in columns:
        x = test[column].to_numpy(zero_copy_only=False).astype(np.float64)
        y = ref[column].to_numpy(zero_copy_only=False).astype(np.float64)
        both = ~np.isnan(x) & ~np.isnan(y)
        mismatch = int((np.isnan(x) != np.isnan(y)).sum())
        d = np.abs(x[both] - y[both])
        stats = {"compared": int(both.sum()), "null_mismatch": mismatch,
                 "max_abs": float(d.max()) if len(d) else None,
                 "mean_abs": float(d.mean()) if len(d) else None,
                 "p99_abs": float(np.quantile(d, 0.99)) if len(d) else None,
                 "spearman": float(spearmanr(x[both], y[both])[0]) if both.sum() > 2 else None}
        result["columns"][column] = stats
        where = f"{mode} {column}"
        if not both.any():
            problems.append(f"{where}: no position scored on both devices")
            continue
        if mismatch > MAX_NULL_MISMATCH:
            problems.append(f"{where}: {mismatch} positions null on one device only")
        if stats["max_abs"] > MAX_ABS_DLOGP:
            at = int(np.argmax(d))
            problems.append(f"{where}: max |dlogp| {stats['max_abs']:.4f} > {MAX_ABS_DLOGP} "
                            f"(bf16 {x[both][at]:.4f} vs fp32 {y[both][at]:.4f})")
        if stats["mean_abs"] > MEAN_ABS_DLOGP:
            problems.append(f"{where}: mean |dlogp| {stats['mean_abs']:.4f} > {MEAN_ABS_DLOGP}")
        if stats["spearman"] is not None and stats["spearman"] < MIN_SPEARMAN:
            problems.append(f"{where}: Spearman {stats['spearman']:.5f} < {MIN_SPEARMAN}")
    result["ok"] = not problems
    result["problems"] = problems
    return result


# -- index ----------------------------------------------------------------------------------------

def token_vectors(atlas: Path) -> tuple[np.ndarray, np.ndarray]:
    """(token_id, unit-length float32 embeddings) of the atlas's tokens, sorted by id."""
    import seqatlas

    table = seqatlas.Atlas(atlas).tokens(columns=["token_id", "embedding"])
    table = table.sort_by("token_id")
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    x = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    x = x.reshape(-1, dim)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return table.column("token_id").to_numpy(), x


def exact_kth(x: np.ndarray, rows: np.ndarray, k: int = 10, block: int = 128) -> np.ndarray:
    """The similarity of each query row's exact k-th nearest vector (cosine; itself included)."""
    kth = np.empty(len(rows), dtype=np.float32)
    for first in range(0, len(rows), block):
        sims = x[rows[first:first + block]] @ x.T
        kth[first:first + block] = np.partition(sims, -k, axis=1)[:, -k]
    return kth


def index_recall(atlas: Path, name: str, ids: np.ndarray, x: np.ndarray, rows: np.ndarray,
                 kth: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """recall@k of index ``name`` (searched as the library searches it: calibrated nprobe)
    against exact cosine search, the vectors of ``rows`` as queries: a hit is a returned
    vector at least as similar as the exact k-th (``kth``; ties count, so repeated vectors do
    not depress it). Also the ids returned."""
    from seqatlas.index import load_index

    _, found = load_index(atlas, name).search(x[rows], k)
    where = np.minimum(np.searchsorted(ids, found), len(ids) - 1)
    valid = (found >= 0) & (ids[where] == found)
    sims = np.einsum("qd,qkd->qk", x[rows], x[where])
    hits = valid & (sims >= kth[:, None] - 1e-4)
    return float(hits.sum(axis=1).mean() / k), found


def build(atlas: Path, name: str, gpu: bool) -> dict:
    from seqatlas.index import build_index

    started = time.perf_counter()
    meta = build_index(atlas, name=name, type="ivf-flat", gpu=gpu)
    return {"seconds": round(time.perf_counter() - started, 3),
            "build_seconds": meta.get("build_seconds"), "train_seconds": meta.get("train_seconds"),
            "add_seconds": meta.get("add_seconds"), "ntotal": meta.get("ntotal"),
            "factory": meta.get("factory"), "gpu": meta.get("gpu"), "device": meta.get("device"),
            "calibrated": {k: meta.get("search", {}).get(k)
                           for k in ("nprobe", "recall_at_10", "target")}}


def faiss_gpus() -> tuple[int, str]:
    import faiss

    count = getattr(faiss, "get_num_gpus", None)
    if count is None:
        return 0, "faiss has no GPU support (faiss.get_num_gpus missing: install faiss-gpu, " \
                  "the seqatlas[gpu] extra)"
    n = int(count())
    return n, "" if n else "faiss sees no GPU (faiss.get_num_gpus() is 0: faiss-cpu, or no " \
                           "device; install the seqatlas[gpu] extra)"


def index_part(atlas: Path, cuda: bool, skipped: dict, failures: list) -> dict:
    out = {}
    out["cpu"] = build(atlas, "cpu", gpu=False)
    gpus, why = faiss_gpus() if cuda else (0, "no CUDA device (torch.cuda.is_available() is "
                                                "False)")
    if gpus:
        out["gpu"] = build(atlas, "gpu", gpu=True)
        if out["gpu"]["gpu"] is not True:
            failures.append(f"index: the build asked for the GPU ran on the CPU "
                            f"({out['gpu']['device']})")
    else:
        skipped["gpu_index"] = why
    ids, x = token_vectors(atlas)
    rows = np.random.default_rng(0).choice(len(ids), min(INDEX_QUERIES, len(ids)), replace=False)
    out["queries"] = len(rows)
    kth = exact_kth(x, rows)
    out["cpu"]["recall_at_10_vs_exact"], found_cpu = index_recall(atlas, "cpu", ids, x, rows,
                                                                  kth)
    if gpus:
        out["gpu"]["recall_at_10_vs_exact"], found_gpu = index_recall(atlas, "gpu", ids, x, rows,
                                                                      kth)
        out["gpu_cpu_agreement_at_10"] = float(np.mean(
            [len(set(a[a >= 0]) & set(b[b >= 0])) / 10 for a, b in zip(found_gpu, found_cpu)]))
        gap = out["cpu"]["recall_at_10_vs_exact"] - out["gpu"]["recall_at_10_vs_exact"]
        if gap > INDEX_RECALL_SLACK:
            failures.append(f"index: the GPU-built index's recall@10 "
                            f"{out['gpu']['recall_at_10_vs_exact']:.3f} is {gap:.3f} below the "
                            f"CPU-built one's (slack {INDEX_RECALL_SLACK})")
    return out


def compare_part(result: dict, work: Path, fastas: dict, references: dict,
                 precision: str) -> None:
    """CUDA: the reference records ingested on the GPU and, in a subprocess, on the CPU in
    float32; their per-position agreement (failures into ``result["failures"]``)."""
    gpu_refs = {}
    for mode in MODES:
        if references[mode] == fastas[mode]:  # the timed input is small enough: reuse it
            gpu_refs[mode] = Path(result["modes"][mode]["atlas"])
        else:
            gpu_refs[mode] = Path(ingest(references[mode], work / f"cuda_reference_{mode}",
                                         mode, precision)["atlas"])
    reference = run_reference(work, references)
    result["cpu_reference"] = {
        "threads": reference["threads"],
        "modes": {m: {k: v[k] for k in ("positions", "seconds", "positions_per_s",
                                         "precision_recorded")}
                  for m, v in reference["modes"].items()}}
    result["comparison"] = {}
    for mode in MODES:
        compared = compare(gpu_refs[mode], Path(reference["modes"][mode]["atlas"]), mode)
        result["comparison"][mode] = compared
        result["failures"].extend(compared["problems"])
        for column, s in compared.get("columns", {}).items():
            if s["compared"]:
                print(f"bf16 vs fp32 {mode:>8} {column:>13}: {s['compared']:,} positions, "
                      f"max |d| {s['max_abs']:.4f}, mean |d| {s['mean_abs']:.5f}, "
                      f"Spearman {s['spearman']:.5f}")


def report_index(result: dict, index: dict, skipped: dict) -> None:
    result["index"] = index
    for where in ("cpu", "gpu"):
        built = index.get(where)
        if built:
            print(f"index built on {where}: {built['seconds']:.2f} s ({built['factory']}, "
                  f"{built['ntotal']:,} vectors; nprobe {built['calibrated']['nprobe']}), "
                  f"recall@10 vs exact {built['recall_at_10_vs_exact']:.3f}")
        else:
            print(f"index built on {where}: skipped: {skipped.get('gpu_index')}")
    if "gpu_cpu_agreement_at_10" in index:
        print(f"GPU- vs CPU-built top-10 agreement: {index['gpu_cpu_agreement_at_10']:.3f}")


# -- main -----------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help=f"directory holding {CHRX} (else generated DNA is used)")
    parser.add_argument("--quick", action="store_true", help="small inputs (CI: ~1 min on 2 "
                        "CPU cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the atlases here (default: a temporary directory, removed)")
    parser.add_argument("--reference", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference is not None:
        return reference_main(args.reference)

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    precision = "bfloat16" if cuda else "float32"
    dtype = torch.bfloat16 if cuda else torch.float32
    no_cuda = "no CUDA device (torch.cuda.is_available() is False)"
    skipped: dict[str, str] = {} if cuda else {part: no_cuda for part in CUDA_PARTS}
    failures: list[str] = []
    work = args.out or Path(tempfile.mkdtemp(prefix="seqatlas-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if args.quick else SIZES
    flop_sample = QUICK_FLOP_SAMPLE if args.quick else FLOP_SAMPLE
    result: dict = {"cuda": cuda, "quick": args.quick, "model": MODEL, "precision": precision,
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if cuda else
                    f"cpu ({torch.get_num_threads()} threads)",
                    "tolerance": {"max_abs_dlogp": MAX_ABS_DLOGP, "mean_abs_dlogp": MEAN_ABS_DLOGP,
                                  "min_spearman": MIN_SPEARMAN,
                                  "max_null_mismatch": MAX_NULL_MISMATCH},
                    "skipped": skipped, "failures": failures, "modes": {}}
    started = time.perf_counter()
    try:
        reference_sizes = ({m: min(REFERENCE_SIZES[m], sizes[m]) for m in MODES}
                           if cuda else None)
        fastas, references, bases, source = make_inputs(args.data, sizes, reference_sizes,
                                                        work / "inputs")
        result["data"] = source
        print(f"device: {result['device']}; torch {torch.__version__}; ingest precision "
              f"{precision}; data: {source}")

        rate = matmul_rate(device, dtype, n=8192 if cuda else 2048,
                           seconds=0.6 if args.quick else 1.5)
        result["matmul_rate"] = {"device": device, "dtype": str(dtype).replace("torch.", ""),
                                 "flops_per_s": rate}
        print(f"dense matmul rate ({device}, {result['matmul_rate']['dtype']}): "
              f"{rate / 1e12:.3f} TFLOP/s")

        # warm-up: CUDA context and kernels, the scorer's one-off batch-size measurement
        warm = write_fasta(work / "inputs" / "warmup.fa", [("warmup", "", bases["unmasked"][:400])])
        ingest(warm, work / "warmup", "unmasked", precision)
        # each ingest loads the model again, inside its timed seconds: how long that takes
        began = time.perf_counter()
        loaded_model(MODEL, "dna", device)
        result["model_load_s"] = round(time.perf_counter() - began, 3)
        print(f"model load ({device}): {result['model_load_s']:.2f} s, included in each "
              "ingest's seconds")

        for mode in MODES:
            done = ingest(fastas[mode], work / f"{device}_{mode}", mode, precision)
            if done["precision_recorded"] != precision:
                failures.append(f"{mode}: the atlas records precision "
                                f"{done['precision_recorded']!r}, not {precision!r}")
            details: dict = {}
            fpb = flops_per_base(MODEL, likelihood=mode, residues=bases[mode][:flop_sample[mode]],
                                 device=device, details=details, precision=precision)
            done["flops_per_base"] = fpb
            done["flop_sample_bases"] = details["bases"]
            done["flops_by_op"] = details["by_op"]
            done["mfu"] = utilisation(done["positions_per_s"], fpb, rate)
            done["device"] = device
            result["modes"][mode] = done
            print(f"{mode:>8}: {done['positions']:>8,} positions in {done['seconds']:7.2f} s = "
                  f"{done['positions_per_s']:10,.0f} positions/s; {fpb / 1e6:8.2f} MFLOP/base; "
                  f"MFU {done['mfu']:.2%} ({precision} on {device})")
        if not cuda:
            for part in CUDA_PARTS:
                print(f"{part}: skipped: {skipped[part]}")

        if cuda:
            try:
                compare_part(result, work, fastas, references, precision)
            except Exception as exc:  # the index part still runs
                traceback.print_exc()
                failures.append(f"bf16 vs fp32: {type(exc).__name__}: {exc}")
        report_index(result, index_part(Path(result["modes"]["unmasked"]["atlas"]), cuda,
                                        skipped, failures), skipped)
    except Exception as exc:  # the RESULT line is printed whatever failed
        traceback.print_exc()
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["ok"] = not failures
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print(f"{'ok' if not failures else 'FAILED'} in {result['seconds']:.1f} s")
    print("RESULT " + json.dumps(result, default=str), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
