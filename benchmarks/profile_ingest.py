"""Benchmark: where an ingest's seconds go, by stage, before and after a change, in one run.

Profiles ``seqatlas.ingest`` (in this process, ``workers=0``, so every stage is visible to
cProfile) on the same input with this checkout and, with ``--baseline REV``, with the
package as of git revision REV (exported to a temporary directory and run in a subprocess),
and prints the seconds of each stage side by side:

- ``model body``: the encoder's forward passes (``ScoringModel.encode``);
- ``head``: the LM head's logits (``token_logits``);
- ``marginalisation``: softmax over the candidates, per-base marginals, logp/entropy/rank;
- ``batch assembly``: input tensors, masks and the rest of ``_run_batch``;
- ``planning``: tokenization, views and the passes (``make_view``, ``plan_rows``);
- ``copy detection``: the in-context copy detector;
- ``arrow tables``: the positions/tokens tables;
- ``pooling``; ``parquet + commit`` (writing parts, hashing, the commit);
- ``batch measurement``: timing batch sizes when the model loads (a CPU, no --batch-tokens);
- ``model load``; ``other`` (imports, input scanning, planning units, ...).

Usage: python benchmarks/profile_ingest.py [--kb 300] [--mode unmasked] [--baseline REV]
           [--fasta F] [--model dnabert6-tiny] [--embeddings]
Without ``--fasta`` it takes ``--kb`` kb of chrX from ../shared/data (X:20,000,000 on), or a
deterministic random sequence when ../shared is absent.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# stage -> functions (file suffix, function name) whose cumulative time is the stage's;
# a stage nested in another (head inside the batch) is subtracted from its parent
STAGES = {
    "model load": [("checkpoints/loading.py", "load_model")],
    "model body": [("", "encode")],
    "batch measurement": [("scoring/scorer.py", "measure_batch_tokens")],
    "head": [("checkpoints/", "token_logits")],  # the outermost (an adapter may call super)
    "likelihoods": [("scoring/scorer.py", "_read_likelihoods")],
    "batch": [("scoring/scorer.py", "_run_batch")],
    "planning": [("scoring/scorer.py", "make_view"), ("scoring/scorer.py", "plan_rows")],
    "copy detection": [("scoring/scorer.py", "_copies")],
    "tables": [("scoring/scorer.py", "_tables")],
    "pooling": [("scoring/pooling.py", "unit_pooled"), ("scoring/pooling.py", "pool_missing")],
    "parquet + commit": [("pyarrow/parquet/core.py", "write_table"),
                         ("store/writer.py", "commit")],
}


def chrx_sample(kb: float, out: Path) -> Path:
    """``kb`` kb of chrX from X:20,000,000 (no N there), or a seeded random sequence."""
    length = int(kb * 1000)
    source = DATA / "hs37_chrX_70Mb.fa.gz"
    if source.exists():
        chunks, total, seen = [], 0, 0
        with gzip.open(source, "rt") as fh:
            fh.readline()
            for line in fh:
                line = line.strip()
                seen += len(line)
                if seen > 20_000_000:
                    chunks.append(line)
                    total += len(line)
                    if total >= length:
                        break
        residues, name = "".join(chunks)[:length], "X_20000000"
    else:
        rng = random.Random(0)
        residues, name = "".join(rng.choice("ACGT") for _ in range(length)), "random"
    out.write_text(f">{name}\n{residues}\n")
    return out


def _cumulative(stats: dict, suffix: str, name: str) -> float:
    return sum(value[3] for (path, _, func), value in stats.items()
               if func == name and path.replace("\\", "/").endswith(suffix or path)
               and ("seqatlas" in path or suffix))


def profile(fasta: Path, *, mode: str, model: str, embeddings: bool) -> dict:
    """Seconds per stage of one in-process ingest of ``fasta``."""
    import cProfile
    import pstats
    import time

    import seqatlas

    atlas = Path(tempfile.mkdtemp(prefix="seqatlas-profile-")) / "atlas"
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    report = seqatlas.ingest(fasta, atlas=atlas, model=model, likelihood=mode,
                             embeddings=embeddings, workers=0, progress=False)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats
    raw = {stage: sum(_cumulative(stats, *f) for f in funcs) for stage, funcs in STAGES.items()}
    raw["head"] = max((value[3] for (path, _, func), value in stats.items()
                       if func == "token_logits" and "seqatlas/checkpoints/" in path), default=0)
    seconds = {
        "model load": raw["model load"],
        "batch measurement": raw["batch measurement"],
        "model body": raw["model body"] - raw["batch measurement"],
        "head": raw["head"],
        "marginalisation": raw["likelihoods"] - raw["head"],
        "batch assembly": raw["batch"] - raw["likelihoods"]
        - (raw["model body"] - raw["batch measurement"]),
        "planning": raw["planning"],
        "copy detection": raw["copy detection"],
        "arrow tables": raw["tables"] - raw["copy detection"],
        "pooling": raw["pooling"],
        "parquet + commit": raw["parquet + commit"],
    }
    seconds["other"] = wall - sum(seconds.values())
    return {"wall_s": wall, "scoring_s": report.seconds, "bases": report.positions_scored,
            "stages": seconds, "package": str(Path(seqatlas.__file__).parent)}


def baseline(rev: str, args) -> dict:
    """:func:`profile` with the package as of git revision ``rev``, in a subprocess."""
    tree = Path(tempfile.mkdtemp(prefix="seqatlas-baseline-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "seqatlas"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--fasta", str(args.fasta), "--mode", args.mode,
               "--model", args.model, "--json"] + (["--embeddings"] if args.embeddings else [])
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=float, default=300.0)
    parser.add_argument("--fasta", type=Path, default=None)
    parser.add_argument("--mode", default="unmasked")
    parser.add_argument("--model", default="dnabert6-tiny")
    parser.add_argument("--embeddings", action="store_true")
    parser.add_argument("--baseline", default=None, help="git revision to compare with")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    if args.fasta is None:
        args.fasta = chrx_sample(args.kb, Path(tempfile.mkdtemp()) / "sample.fa")
    before = baseline(args.baseline, args) if args.baseline else None
    after = profile(args.fasta, mode=args.mode, model=args.model, embeddings=args.embeddings)
    if args.json:
        print(json.dumps(after))
        return
    runs = [("before", before), ("after", after)] if before else [("this", after)]
    print(f"{args.mode} ingest of {after['bases']:,} bases, {args.model}, in process "
          "(cProfile adds overhead to Python-heavy stages)")
    print(f"{'stage':<18}" + "".join(f"{name:>12}" for name, _ in runs))
    for stage in after["stages"]:
        print(f"{stage:<18}" + "".join(f"{run['stages'][stage]:>11.2f}s" for _, run in runs))
    for key in ("scoring_s", "wall_s"):
        print(f"{key:<18}" + "".join(f"{run[key]:>11.2f}s" for _, run in runs))
    if before:
        print(f"scoring speed-up: {before['scoring_s'] / after['scoring_s']:.2f}x")
    print(json.dumps({name: run for name, run in runs}))


if __name__ == "__main__":
    main()
