"""Benchmark: exact and fast ingest with AntiBERTy on real UniProt proteins, 2-core CPU.

Prints, in one run:
- exact positions/s of the full ``seqatlas.ingest`` (Ray started, model loaded, Parquet
  committed) vs the per-sequence baseline of AntiBERTy's own ``pseudo_log_likelihood``
  (each sequence's L masked copies in one batch, MLM head on every position), their ratio,
  and model FLOP utilisation = achieved model FLOP/s / torch matmul FLOP/s measured here;
- fast vs exact: speed-up and Spearman correlation of per-position logp;
- bytes on disk per position without and with float16 embeddings.

Usage: python benchmarks/ingest_antiberty.py [--n 200] [--selection shortest|random]
(needs ../shared/data/uniprot_20k.fa.gz).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uniprot_20k.fa.gz"


def read_proteins(path: Path) -> list[tuple[str, str]]:
    records, name, chunks = [], None, []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith(">"):
                if name:
                    records.append((name, "".join(chunks)))
                name, chunks = line[1:].split()[0], []
            else:
                chunks.append(line.strip())
    records.append((name, "".join(chunks)))
    return records


def select(records, n: int, lo: int, hi: int, how: str, seed: int):
    standard = set("ACDEFGHIKLMNPQRSTVWY")
    pool = [r for r in records if lo <= len(r[1]) <= hi and set(r[1]) <= standard]
    if how == "shortest":
        return sorted(pool, key=lambda r: (len(r[1]), r[0]))[:n]
    return random.Random(seed).sample(pool, n)


def matmul_flops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * 2048**3 / best


def model_flops(lengths, *, layers: int, hidden: int, vocab: int, head_tokens_per_row) -> float:
    """Forward FLOPs of exact PLL: one row of L+2 tokens per position."""
    total = 0.0
    for length, head_tokens in zip(lengths, head_tokens_per_row):
        t = length + 2
        per_row = layers * (24 * t * hidden**2 + 4 * t * t * hidden)
        head = head_tokens * (2 * hidden * hidden + 2 * hidden * vocab)
        total += length * (per_row + head)
    return total


def baseline(records, threads: int) -> tuple[float, dict]:
    """AntiBERTy's pseudo_log_likelihood recipe, one batch of L masked copies per sequence."""
    import torch
    from transformers import BertForMaskedLM

    from seqatlas.checkpoints import resolve_model

    spec = resolve_model("antiberty", kind="protein")
    tok = spec.tokenizer()
    model = BertForMaskedLM.from_pretrained(spec.path, attn_implementation="sdpa").eval()
    torch.set_num_threads(threads)
    letters = torch.as_tensor(tok.candidates[1].token_ids)
    out = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for name, seq in records:
            ids = torch.from_numpy(tok.tokenize(seq.encode()).ids)
            n = len(seq)
            batch = ids.repeat(n, 1)
            batch[torch.arange(n), torch.arange(n) + 1] = tok.specials.mask
            logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
            diag = logits[torch.arange(n), torch.arange(n) + 1][:, letters]
            logp = torch.log_softmax(diag, -1)
            true = torch.from_numpy(tok.letter_index(seq.encode()))
            out[name] = logp.gather(1, true[:, None]).squeeze(1).numpy()
    return time.perf_counter() - start, out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def logp_by_key(atlas):
    return atlas.positions(columns=["seq_id", "pos", "logp"]).sort_by(
        [("seq_id", "ascending"), ("pos", "ascending")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--min-length", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=500)
    parser.add_argument("--selection", choices=["shortest", "random"], default="shortest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DATA, help="uniprot_20k.fa.gz")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"needs {args.data}")

    import seqatlas

    records = select(read_proteins(args.data), args.n, args.min_length, args.max_length,
                     args.selection, args.seed)
    lengths = [len(s) for _, s in records]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="seqatlas-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "proteins.fa"
    fasta.write_text("".join(f">{n}\n{s}\n" for n, s in records))
    print(f"{len(records)} UniProt proteins ({args.selection}), lengths {min(lengths)}-"
          f"{max(lengths)} (median {int(np.median(lengths))}), {sum(lengths):,} positions")

    peak = matmul_flops(args.threads)
    print(f"torch fp32 matmul: {peak / 1e9:.1f} GFLOP/s on {args.threads} threads")

    results = {}
    for mode, embeddings in (("exact", True), ("fast", False)):
        atlas_dir = work / f"atlas_{mode}"
        shutil.rmtree(atlas_dir, ignore_errors=True)
        start = time.perf_counter()
        report = seqatlas.ingest(fasta, atlas=atlas_dir, likelihood=mode, embeddings=embeddings,
                                 progress=False)
        wall = time.perf_counter() - start
        results[mode] = {"wall": wall, "scoring": report.seconds, "report": report,
                         "atlas": seqatlas.Atlas(atlas_dir)}
        print(f"seqatlas ingest --likelihood {mode}: {wall:.1f} s wall "
              f"({report.seconds:.1f} s scoring), {sum(lengths) / wall:.1f} positions/s, "
              f"padding efficiency {report.padding_efficiency:.3f}")

    base_seconds, base_logp = baseline(records, args.threads)
    print(f"baseline (AntiBERTy pseudo_log_likelihood recipe): {base_seconds:.1f} s, "
          f"{sum(lengths) / base_seconds:.1f} positions/s")

    exact = results["exact"]
    spec = exact["atlas"].manifest["model"]
    flops = model_flops(lengths, layers=spec["num_layers"], hidden=spec["hidden_size"],
                        vocab=len(spec["tokenizer"]["letters"]) + 5,
                        head_tokens_per_row=[1] * len(lengths))
    base_flops = model_flops(lengths, layers=spec["num_layers"], hidden=spec["hidden_size"],
                             vocab=25, head_tokens_per_row=[n + 2 for n in lengths])
    ratio = (sum(lengths) / exact["wall"]) / (sum(lengths) / base_seconds)
    mfu = flops / exact["scoring"] / peak
    exact_table = logp_by_key(exact["atlas"])
    fast_table = logp_by_key(results["fast"]["atlas"])
    e, f = exact_table["logp"].to_numpy(), fast_table["logp"].to_numpy()
    # the atlas rows are sorted by (seq_id, pos), so the baseline is concatenated likewise
    b = np.concatenate([base_logp[n] for n in sorted(base_logp)])
    agree = float(np.max(np.abs(b - e)))
    summary = {
        "proteins": len(records),
        "positions": sum(lengths),
        "matmul_gflops": peak / 1e9,
        "exact_positions_per_s_full_ingest": sum(lengths) / exact["wall"],
        "baseline_positions_per_s": sum(lengths) / base_seconds,
        "exact_vs_baseline_ratio": ratio,
        "model_flop_utilisation_exact": mfu,
        "model_flop_utilisation_baseline": base_flops / base_seconds / peak,
        "fast_speedup_scoring": exact["scoring"] / results["fast"]["scoring"],
        "fast_speedup_wall": exact["wall"] / results["fast"]["wall"],
        "fast_vs_exact_spearman": spearman(e, f),
        "baseline_vs_exact_max_abs_logp_diff": agree,
        "bytes_per_position_without_embeddings": (
            exact["atlas"].summary()["tables"]["positions"]["bytes"] / sum(lengths)),
        "bytes_per_position_with_fp16_embeddings": (
            (exact["atlas"].summary()["tables"]["positions"]["bytes"]
             + exact["atlas"].summary()["tables"]["tokens"]["bytes"]) / sum(lengths)),
    }
    print(f"exact full ingest vs baseline: ratio {ratio:.2f} (target >= 1.0)")
    print(f"model FLOP utilisation: seqatlas {mfu:.2f}, baseline "
          f"{summary['model_flop_utilisation_baseline']:.2f} (target >= 0.5)")
    print(f"fast vs exact: speed-up {summary['fast_speedup_scoring']:.1f}x scoring "
          f"({summary['fast_speedup_wall']:.1f}x wall), Spearman "
          f"{summary['fast_vs_exact_spearman']:.3f} (targets >= 6x, >= 0.9)")
    print(f"bytes on disk per position: {summary['bytes_per_position_without_embeddings']:.1f} "
          f"without embeddings, {summary['bytes_per_position_with_fp16_embeddings']:.1f} with "
          "float16 embeddings")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
