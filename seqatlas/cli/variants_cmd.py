"""``seqatlas variants score|scan``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from seqatlas.cli.options import (ATLAS, FORMAT, NO_PROGRESS, PROGRESS, AblationMethod, Format,
                                  Progress, VariantFormat)

variants_app = typer.Typer(help="Variant effects: the LLR of substitutions from the atlas's "
                           "distributions, their look-up exposure, saturation scans.",
                           no_args_is_help=True)




OUTPUT = typer.Option(None, "--output", "-o", help="Write the rows to this file: parquet, or "
                      "csv/tsv/json by --format or by its extension.")


def _write(table, output: Optional[Path], format: Format, what: str) -> None:
    from seqatlas.cli.tables import note, print_table
    from seqatlas.query.output import write_result

    if output is None:
        print_table(table, format, what=what)
        return
    rows = write_result(table, output, format.value)
    note(f"{rows:,} {what} written to {output}")


@variants_app.command("score")
def score(
    inputs: List[str] = typer.Argument(..., help="A variant file (VCF, plain/gzip/bgzip; "
                                       "CSV/TSV with a mutant column, e.g. a ProteinGym DMS "
                                       "file; TSV chrom pos ref alt), or mutant strings such "
                                       "as A123G and A123G:K140R (1-based)."),
    atlas: str = ATLAS,
    seq_id: Optional[str] = typer.Option(None, "--seq-id", help="The atlas sequence of "
                                         "variants that name none (default: the atlas's only "
                                         "sequence)."),
    offset: int = typer.Option(0, "--offset", help="The input numbers residues from "
                               "OFFSET + 1: atlas position = number - OFFSET (ESM's "
                               "--offset-idx minus 1)."),
    chrom_map: Optional[Path] = typer.Option(None, "--chrom-map", help="Two-column file: "
                                             "input chromosome name, atlas sequence id."),
    input_format: VariantFormat = typer.Option(VariantFormat.auto, "--input-format",
                                               help="The variant file's format."),
    mutant_column: str = typer.Option("mutant", "--mutant-column", help="The column of "
                                      "mutant strings in a CSV/TSV file."),
    seq_id_column: Optional[str] = typer.Option(None, "--seq-id-column", help="Column naming "
                                                "each variant's sequence (default: seq_id if "
                                                "present)."),
    score_column: Optional[str] = typer.Option(None, "--score-column", help="Measured "
                                               "scores (e.g. DMS_score): report Spearman, "
                                               "AUC, MCC, NDCG and top-10% recall."),
    bin_column: Optional[str] = typer.Option(None, "--bin-column", help="Measured binary "
                                             "classes (e.g. DMS_score_bin) for AUC and MCC."),
    joint: bool = typer.Option(False, "--joint", help="Also llr_joint: a multi-mutant's "
                               "sites masked at once."),
    lookup: bool = typer.Option(False, "--lookup", help="Rescore each site with its copy "
                                "partner, and a matched control, corrupted: llr_partner, "
                                "llr_control, lookup_shift, llr_corrected."),
    method: AblationMethod = typer.Option(AblationMethod.mask, "--method", help="--lookup's "
                                          "corruption: mask, shuffle or substitute."),
    seed: int = typer.Option(0, "--seed", help="Seed of shuffle/substitute."),
    per_site: bool = typer.Option(False, "--per-site", help="One row per site of each "
                                  "variant instead of one per variant."),
    store: Optional[str] = typer.Option(None, "--store", help="Also commit the variants to "
                                        "the atlas's variants table under this set name "
                                        "(SQL view variant_scores)."),
    ablation_method: Optional[AblationMethod] = typer.Option(
        None, "--ablation-method", help="Whose stored probe icl values to show (default: the "
        "first method the atlas holds)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The atlas's checkpoint, "
                                        "when the path recorded in the atlas moved."),
    workers: int = typer.Option(0, "--workers", help="Rescoring actors; 0 (default) "
                                "rescores in this process."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Padded tokens "
                                               "per forward pass when sites are rescored."),
    output: Optional[Path] = OUTPUT,
    format: Format = FORMAT,
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
) -> None:
    """Score variants: llr = log p(alt) - log p(ref) at each site, per strand and mean.

    Rows that cannot be scored say why in the problem column; with --score-column the
    evaluation (overall, inside and outside in-context copies) goes to stderr.
    """
    from seqatlas.cli.tables import note
    from seqatlas.variants.score import score_variants

    result = score_variants(
        inputs, atlas=atlas, seq_id=seq_id, offset=offset, chrom_map=chrom_map,
        format=input_format.value, mutant_column=mutant_column, seq_id_column=seq_id_column,
        score_column=score_column, bin_column=bin_column, joint=joint, lookup=lookup,
        method=method.value, seed=seed, per_site=per_site, store=store,
        ablation_method=ablation_method.value if ablation_method else None, model=model,
        workers=workers, batch_tokens=batch_tokens, progress=progress)
    _write(result.table, output, format, "rows")
    problems = "; ".join(f"{n} {k}" for k, n in sorted(result.problems.items()))
    note(f"{result.scored:,} of {result.variants:,} variant(s) scored"
         + (f"; not scored: {problems}" if problems else "")
         + (f"; {result.sites_rescored:,} site(s) rescored (the atlas stores no "
            "distributions there)" if result.sites_rescored else "")
         + (f"; stored as variant set {result.stored_set!r}" if result.stored_set else ""))
    if result.evaluation is not None:
        note("evaluation of llr against " + score_column + ": "
             + json.dumps(result.evaluation))


@variants_app.command("scan")
def scan(
    atlas: str = ATLAS,
    region: Optional[str] = typer.Option(None, "--region", help="SEQ:START-END, as "
                                         "`seqatlas plot track --region` takes it."),
    seq_id: Optional[str] = typer.Option(None, "--seq-id", help="A whole sequence."),
    output: Optional[Path] = OUTPUT,
    format: Format = FORMAT,
) -> None:
    """Every possible substitution (19 per residue, 3 per base) of a region or sequence,
    from the stored distributions.
    """
    from seqatlas.variants.scan import scan_variants

    table = scan_variants(atlas, region=region, seq_id=seq_id)
    _write(table, output, format, "substitutions")
