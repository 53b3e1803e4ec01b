"""``seqatlas models``."""

from __future__ import annotations

from rich.text import Text

from seqatlas.checkpoints.tokenizers import FAMILIES
from seqatlas.cli.options import LIST_FORMAT, Format, json_option
from seqatlas.cli.tables import FittedTable, chosen_format, print_table

HF_HELP = ("Any Hugging Face masked-LM checkpoint works too: pass its directory (or hub id, "
           f"with network) to --model. The tokenizer family ({', '.join(FAMILIES)}) is "
           "detected from its vocabulary; --tokenizer overrides.")


def models(format: Format = LIST_FORMAT,
           as_json: bool = json_option("Same as --format json.")) -> None:
    """List the embedded models and how to use a Hugging Face one.

    Piped, or with --format tsv|csv|json|jsonl|parquet, one row per model with every field
    of seqatlas.models() in full.

    Example: seqatlas models | cut -f1
    """
    import pyarrow as pa

    import seqatlas

    print_table(pa.Table.from_pylist(seqatlas.models()), chosen_format(format, as_json),
                render=_print_models)


def _print_models(table, console) -> None:
    """The models as a rich table, their descriptions, and how to use a Hugging Face one."""
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
    console.print(HF_HELP, markup=False)
