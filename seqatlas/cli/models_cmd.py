"""``seqatlas models``."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

HF_HELP = ("Any Hugging Face masked-LM checkpoint works too: pass its directory (or hub id, "
           "with network) to --model. The tokenizer family (single, overlapping_kmer, "
           "nonoverlapping_kmer, bpe) is detected from its vocabulary; --tokenizer overrides.")


def models(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the embedded models and how to use a Hugging Face one."""
    import seqatlas

    rows = seqatlas.models()
    console = Console()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="embedded models")
    for column in ("name", "kinds", "tokenizer", "parameters", "alphabet", "context"):
        table.add_column(column)
    for r in rows:
        family = r["family"] + (f" (k={r['k']})" if r["family"].endswith("kmer") else "")
        table.add_row(r["name"], "/".join(r["kinds"]), family, f"{r['parameters']:,}",
                      r["alphabet"], f"{r['context_tokens']} tokens = "
                      f"{r['window_residues']} residues")
    console.print(table)
    for r in rows:
        console.print(f"[bold]{r['name']}[/]: {r['description']}")
    console.print(HF_HELP)
