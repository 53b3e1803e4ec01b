"""``seqatlas models``."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from seqatlas.checkpoints.tokenizers import FAMILIES
from seqatlas.cli.options import json_option

HF_HELP = ("Any Hugging Face masked-LM checkpoint works too: pass its directory (or hub id, "
           f"with network) to --model. The tokenizer family ({', '.join(FAMILIES)}) is "
           "detected from its vocabulary; --tokenizer overrides.")


def models(as_json: bool = json_option("Print as JSON.")) -> None:
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
