"""Benchmark: ``probe doubling --shuffle`` on real antibody domains with AntiBERTy.

For each of the first N VH/VL domains of ``jain2017_antibodies.fa.gz`` (in-distribution for
AntiBERTy) and a seeded shuffle of it: mean logp of copy 1 alone, in S+S, in S+S with copy 2
masked, in the same-composition control S+C (C a shuffle of S) intact and with C masked;
icl_gain, control_gain and net_gain per sequence, with their mean and range. Also the
throughput in scored positions per second.

Usage: python benchmarks/probe_doubling.py [--sequences 20] [--method mask] [--likelihood exact]
(needs ../shared/data).
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=20)
    parser.add_argument("--method", default="mask")
    parser.add_argument("--likelihood", default="exact")
    args = parser.parse_args()
    from seqatlas.probe import probe_doubling
    from seqatlas.probe.doubling import summary

    source = DATA / "jain2017_antibodies.fa.gz"
    if not source.exists():
        raise SystemExit(f"{source} not found: this benchmark needs ../shared/data")
    records, name = [], None
    for line in gzip.open(source, "rt"):
        if line.startswith(">"):
            if len(records) == args.sequences:
                break
            name = line[1:].split()[0].replace("|", "_")
            records.append([name, ""])
        else:
            records[-1][1] += line.strip()
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "domains.fa"
        fasta.write_text("".join(f">{n}\n{s}\n" for n, s in records))
        started = time.perf_counter()
        table = probe_doubling(fasta, model="antiberty", shuffle=True, method=args.method,
                               likelihood=args.likelihood, workers=0, progress=False)
        seconds = time.perf_counter() - started
    print(f"{len(records)} domains x 2 variants, --method {args.method} --likelihood "
          f"{args.likelihood}: {seconds:.1f} s "
          f"({sum(len(s) for _, s in records) * 2 * 4 / seconds:,.0f} copy-1 positions/s "
          "over the 4 scored constructs)")
    columns = ("seq_id", "variant", "length", "logp_alone", "logp_doubled", "logp_partner",
               "logp_control_intact", "icl_gain", "control_gain", "net_gain")
    print("\t".join(columns))
    for row in table.to_pylist():
        print("\t".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                        for c in columns))
    for variant, gains in summary(table).items():
        print(f"{variant}: " + "; ".join(
            f"{gain} mean {v['mean']:.3f} range [{v['min']:.3f}, {v['max']:.3f}]"
            for gain, v in gains.items()))


if __name__ == "__main__":
    main()
