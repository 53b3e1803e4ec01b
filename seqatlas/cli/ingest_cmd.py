"""``seqatlas ingest`` and ``seqatlas demo``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from seqatlas.cli.options import (CPUS_PER_WORKER, GPUS_PER_WORKER, NO_PROGRESS, PROGRESS,
                                  Distributions, Embeddings, Kind, Likelihood, Precision, Progress,
                                  Strands, Tokenizer,
                                  WriteParts,
                                  address_option, atlas_option, json_option)


LIKELIHOOD = typer.Option(
    None, show_default=False, help="(Default: exact for a masked LM, causal for a causal "
    "one, or the atlas's when extending it.) exact: one masked pass per position (PLL term); "
    "fast: well-separated positions masked together, ~15% of tokens per pass (7 passes per "
    "window for one-token-per-residue models); unmasked: one pass, ref visible; causal: one "
    "pass, log p(x_i | x_<i), causal models only; none: embeddings only.")
LAYER = typer.Option(
    None, help="Hidden layer for embeddings (0 = input embeddings; default the last; negative "
    "counts back). Repeat for several: the first goes in the tokens column 'embedding', each "
    "further layer L in 'embedding_layer_L'.")
BATCH_TOKENS = typer.Option(None, help="Token budget of one forward pass, rows x longest row "
                            "(default: 32768 on GPU; on a CPU, the fastest of 1024-16384 for this model, "
                            "measured once per machine and kept in the user's cache).")
UNIT_TOKENS = typer.Option(None, help="Computed tokens per work unit, the resume granularity "
                           "(default: 65536 for exact/fast, 262144 for unmasked/none).")
COPY_K = typer.Option(
    None, "--copy-k", help="k-mer length of the in-context copy detector: each position's "
    "copy_offset and copy_strand give the nearest other occurrence of the k-mer around it (direct, "
    "or reverse complement for DNA/RNA) inside its scoring window (default: 12 for DNA/RNA, 6 "
    "for proteins; 0 turns detection off, leaving the columns null).")


def ingest(
    fasta: list[Path] = typer.Argument(..., help="FASTA file(s): .fa/.fasta, gzip or bgzip."),
    atlas: str = atlas_option("Atlas: a directory, or a URI such as s3://bucket/prefix (created or extended)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", show_default=False,
        help="Embedded model name, checkpoint directory or file (a fair-esm or CARP .pt, an "
        "ESM C .pth) or hub id (default: antiberty, or the atlas's model when extending it; "
        "the settings below likewise: a file added to an atlas is scored as the atlas was)."),
    adapter: Optional[str] = typer.Option(
        None, "--adapter", show_default=False,
        help="Model adapter (transformers, transformers-causal, fair-esm, esmc, carp, gpn, or "
        "a plugin; `seqatlas models` lists them); default: detected from the checkpoint."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code",
        help="Run the code a checkpoint ships (its config's auto_map), as transformers' "
        "trust_remote_code; its hash becomes part of the model's identity."),
    kind: Optional[Kind] = typer.Option(None, help="Sequence kind; detected when omitted."),
    likelihood: Optional[Likelihood] = LIKELIHOOD,
    embeddings: Optional[Embeddings] = typer.Option(
        None, show_default=False, help="Store per-token embeddings, or not (default: float16)."),
    layer: Optional[list[int]] = LAYER,
    window: Optional[int] = typer.Option(None, help="Residues per window (default: the model's "
                                         "context)."),
    overlap: Optional[int] = typer.Option(
        None, help="Residues shared by neighbouring windows (default: window/4). A causal "
        "model's positions keep at least this much context before them (and after them "
        "with --strands both)."),
    batch_tokens: Optional[int] = BATCH_TOKENS,
    unit_tokens: Optional[int] = UNIT_TOKENS,
    strands: Optional[Strands] = typer.Option(
        None, show_default=False, help="DNA/RNA: 'both' also scores the reverse complement "
        "(logp_rc, logp_mean columns) (default: forward)."),
    skip_n_runs: Optional[int] = typer.Option(
        None, show_default=False, help="DNA/RNA: runs of at least this many N are not sent to "
        "the model (null scores); 0 scores every N (default: 50)."),
    copy_k: Optional[int] = COPY_K,
    distributions: Optional[Distributions] = typer.Option(
        None, show_default=False, help="Store each position's predicted distribution over the "
        "kind's standard letters (the letter_logp and letter_logp_rc columns), which `seqatlas "
        "variants` scores substitutions from: float32 (default; 80 B per residue, 16 B per "
        "base and strand, before compression), float16 (half), or none."),
    workers: Optional[int] = typer.Option(None, help="Scoring actors (default: one per GPU, "
                                          "else 1); 0 scores in this process without Ray."),
    gpus_per_worker: Optional[float] = GPUS_PER_WORKER,
    cpus_per_worker: Optional[int] = CPUS_PER_WORKER,
    address: Optional[str] = address_option("Ray cluster address ('auto' or host:port); "
                                            "default: a local Ray, started quietly."),
    max_retries: int = typer.Option(2, help="Retries of a failing work unit."),
    stall_timeout: float = typer.Option(
        1800.0, "--stall-timeout", metavar="SECONDS",
        help="Stop with an error when no work unit finishes for this long (e.g. Ray waiting "
        "for resources, a hung worker); committed work is kept and a re-run resumes. 0 waits "
        "forever."),
    tokenizer: Optional[Tokenizer] = typer.Option(None, help="Override the detected "
                                                  "tokenizer family."),
    write_parts: WriteParts = typer.Option(
        WriteParts.workers, "--write-parts",
        help="Who writes the Parquet parts: 'workers' write their units' parts into the atlas "
        "and send the driver only names, sizes and checksums (when the atlas is on storage "
        "every Ray node reaches: one machine, a shared file system, s3://; a node that does not "
        "see it sends its rows to the driver, with a warning); 'driver' sends every result to "
        "the driver, which writes it. The atlas is byte for byte the same."),
    no_pool: bool = typer.Option(
        False, "--no-pool", help="Store no pooled embeddings. By default (with embeddings) "
        "the same passes also give the mean per sequence (proteins; and the BOS/CLS state "
        "where the model has one) or per --pool-bin bases (DNA/RNA), every stored layer, in "
        "the pooled table."),
    pool_bin: Optional[int] = typer.Option(
        None, "--pool-bin", metavar="BASES", help="Bases per pooled bin; 0 pools whole "
        "sequences (default: 1000 for DNA/RNA, 0 for proteins; the atlas's own when extending)."),
    fast_stride: Optional[int] = typer.Option(
        None, "--fast-stride", metavar="PASSES", help="--likelihood fast: passes per window; "
        "pass r masks mask units r, r+PASSES, ... (default: the atlas's own, else the "
        "tokenizer's: 7 for one-residue tokens, 24 for overlapping 6-mers; fewer passes are "
        "faster and further from exact, see the README's Benchmarks)."),
    precision: Optional[Precision] = typer.Option(
        None, "--precision", show_default=False, help="The forward passes' arithmetic: "
        "float32 (default), or bfloat16 (opt-in, on a GPU or a CPU with bf16 units: faster, "
        "within the README's stated tolerance of float32; recorded in the atlas, so an "
        "extension uses it too)."),
    compact: bool = typer.Option(
        False, "--compact", help="At the end, rewrite the run's many per-unit parts as few "
        "large files sorted by (seq_id, pos), as `seqatlas compact` does (region reads then "
        "open a few row groups)."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
    as_json: bool = json_option("Print the report as JSON."),
) -> None:
    """Score FASTA files into an atlas: per-position likelihoods and per-token embeddings.

    Re-running the same command skips committed work, so an interrupted run resumes.
    """
    import seqatlas

    settings = dict(  # None: not given, the atlas's own setting (or the default) applies
        model=model, kind=_value(kind), likelihood=_value(likelihood),
        embeddings=None if embeddings is None else embeddings == Embeddings.float16,
        layer=(layer[0] if len(layer) == 1 else list(layer)) if layer else None,
        window=window, overlap=overlap, unit_tokens=unit_tokens, tokenizer=_value(tokenizer),
        strands=_value(strands), skip_n_runs=skip_n_runs, copy_k=copy_k,
        distributions=_value(distributions), adapter=adapter, pool=False if no_pool else None,
        pool_bin=pool_bin, fast_stride=fast_stride, precision=_value(precision))
    report = seqatlas.ingest(
        fasta, atlas=atlas, batch_tokens=batch_tokens, workers=workers,
        gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, address=address,
        max_retries=max_retries, stall_timeout=stall_timeout, progress=progress,
        write_parts=write_parts.value, trust_remote_code=trust_remote_code, compact=compact,
        **{k: v for k, v in settings.items() if v is not None})
    _print_report(report.as_dict(), as_json)


def _value(choice: Enum | None) -> str | None:
    return choice.value if choice is not None else None


def _print_report(report: dict, as_json: bool) -> None:
    console = Console()
    if as_json:
        console.print_json(json.dumps(report))
        return
    console.print(
        f"[bold]{report['atlas']}[/]: {report['units_scored']} unit(s) scored, "
        f"{report['units_skipped']} already committed, {report['positions_scored']:,} positions "
        f"in {report['seconds']:.1f} s ({report['positions_per_second']:,.1f} positions/s, "
        f"padding efficiency {report['padding_efficiency']:.2f})"
        + (f"; {report['positions_unscored']:,} positions in long N runs left unscored."
           if report["positions_unscored"] else "."))
    reasons = report.get("unscored_reasons") or {}
    if reasons:  # on stderr, beside the progress: what has no score, and why
        Console(stderr=True).print(
            "unscored positions by reason: "
            + "; ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items())),
            highlight=False)


def demo(
    atlas: Optional[Path] = atlas_option("Directory for the demo's atlases, doubling table "
                                         "and report (default: a temporary directory).",
                                         default=None),
    workers: Optional[int] = typer.Option(0, help="Scoring actors (Ray); 0 scores in this "
                                          "process, without Ray's start-up."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
    as_json: bool = json_option("Print the summary as JSON."),
) -> None:
    """Run the whole job on the embedded models and bundled real sequences, and print what
    each stage found, its seconds, and where the HTML report is.

    The stages, in this process (about a minute on 2 idle CPU cores):
    1. ingest, fast mode, float16 embeddings: AntiBERTy on 8 therapeutic antibody
       domains (Jain et al. 2017) and 2 ankyrin-repeat proteins; dnabert6-tiny on
       3 kb of human chrX held out from its training (forward strand);
    2. repeats of the DNA: its in-context copies (annotate --detect) and tandem
       repeats (annotate --run tantan; the bundled tantan output without tantan);
    3. probe icl on every copy: the gain when the copy's partner is masked,
       beside a matched control region masked alike;
    4. anomalous regions (|z| >= 2.5) and their enrichment in repeats and copies;
    5. a Flat embedding index, a k-mer lookup in it (knn), identity vs context;
    6. probe doubling (S+S against the same-composition S+C) on two antibodies'
       VH and VL domains and their shuffles, with AntiBERTy: doubling.parquet;
    7. report.html, one self-contained file of all of it.
    """
    import seqatlas

    summary = seqatlas.demo(atlas=atlas, workers=workers, progress=progress)
    if as_json:
        Console().print_json(json.dumps(summary))
        return
    from seqatlas.cli.info_cmd import print_demo

    print_demo(summary)
