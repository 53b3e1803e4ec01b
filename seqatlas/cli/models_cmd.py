"""``seqatlas models``."""

from __future__ import annotations

import typer
from rich.text import Text

from seqatlas.checkpoints.tokenizers import FAMILIES
from seqatlas.cli.options import LIST_FORMAT, Format, json_option
from seqatlas.cli.tables import FittedTable, chosen_format, print_table

HF_HELP = ("A Hugging Face checkpoint's tokenizer family ({}) is detected from its vocabulary; "
           "--tokenizer overrides. The adapter is detected from the checkpoint; --adapter "
           "names one.").format(", ".join(FAMILIES))


def models(format: Format = LIST_FORMAT,
           adapters: bool = typer.Option(
               False, "--adapters", help="List the model adapters (one row each: what it "
               "loads, whether it is installed, how to install it) instead of the models."),
           as_json: bool = json_option("Same as --format json.")) -> None:
    """List the embedded models and the adapters that load other checkpoints.

    Piped, or with --format tsv|csv|json|jsonl|parquet, one row per model with every field
    of seqatlas.models() in full (with --adapters, of seqatlas.adapters()).

    Example: seqatlas models --adapters --format tsv | cut -f1,4
    """
    import pyarrow as pa

    import seqatlas

    if adapters:
        print_table(pa.Table.from_pylist(seqatlas.adapters()), chosen_format(format, as_json),
                    render=_print_adapters)
        return
    print_table(pa.Table.from_pylist(seqatlas.models()), chosen_format(format, as_json),
                render=_print_models)


def _print_models(table, console) -> None:
    """The models as a rich table, their descriptions, and the adapters."""
    import seqatlas

    rows = table.to_pylist()
    console.print(FittedTable(
        ("name", "kinds", "tokenizer", "parameters", "alphabet", "context"),
        ([r["name"], "/".join(r["kinds"]),
          r["family"] + (f" (k={r['k']})" if r["family"].endswith("kmer") else ""),
          f"{r['parameters']:,}", r["alphabet"],
          f"{r['context_tokens']} tokens = {r['window_residues']} residues"] for r in rows),
        title="embedded models", right=("parameters",)))
    for r in rows:
        console.print(Text.assemble((r["name"], "bold"), f": {r['description']}"))
    console.print()
    import pyarrow as pa

    _print_adapters(pa.Table.from_pylist(seqatlas.adapters()), console)


def _print_adapters(table, console) -> None:
    """The adapters as a rich table, with what each loads."""
    rows = table.to_pylist()
    console.print(FittedTable(
        ("adapter", "loads", "installed"),
        ([r["adapter"], r["checkpoint"], "yes" if r["installed"] else f"no: {r['install']}"]
         for r in rows), title="model adapters (--adapter)"))
    for r in rows:
        console.print(Text.assemble((r["adapter"], "bold"), f": {r['description']}"))
    console.print(HF_HELP, markup=False)
