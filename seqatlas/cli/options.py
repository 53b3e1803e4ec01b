"""What the command modules share: choice enums built from the library's tuples, and the
options that several commands take (same flags, defaults and help wherever they appear).

Every choice enum comes from the tuple its library module defines (``choices``), so a value
added there is accepted by the CLI and listed in ``--help`` without a copy here. The modules
imported below load numpy and pyarrow, never torch, ray, transformers or faiss: ``seqatlas
--help``, ``info`` and ``query sql`` stay light.
"""

from __future__ import annotations

import enum
import keyword
import re
from collections.abc import Iterable
from typing import Any

import typer

from seqatlas.checkpoints.tokenizers import FAMILIES
from seqatlas.fasta import KINDS
from seqatlas.index.build import TYPES
from seqatlas.index.search import METRICS
from seqatlas.query.engine import OUTPUT_FORMATS
from seqatlas.query.repeat_enrichment import GROUPINGS
from seqatlas.query.views import TAILS
from seqatlas.repeats.finders import FINDERS
from seqatlas.repeats.formats import FORMATS
from seqatlas.schema import ABLATION_METHODS
from seqatlas.scoring.ablation import RESCORE_LIKELIHOODS
from seqatlas.scoring.scorer import LIKELIHOOD_MODES, STRANDS


def member_name(value: str) -> str:
    """A Python name for a choice: '-' and other non-word characters become '_', and a
    keyword gets a trailing '_' ('ivf-pq' -> ivf_pq, 'class' -> class_)."""
    name = re.sub(r"\W", "_", value)
    return name + "_" if keyword.iskeyword(name) else name


def choices(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A ``str`` enum whose members are ``values``, in order (Typer shows them as choices)."""
    return enum.Enum(name, {member_name(v): v for v in values}, type=str, module=__name__,
                     qualname=name)


# --- choices from the library ----------------------------------------------------------------

Kind = choices("Kind", KINDS)  # ingest --kind
Likelihood = choices("Likelihood", LIKELIHOOD_MODES)  # ingest --likelihood
Strands = choices("Strands", STRANDS)  # ingest --strands
Tokenizer = choices("Tokenizer", FAMILIES)  # ingest --tokenizer
RepeatFormat = choices("RepeatFormat", FORMATS)  # annotate --format
RepeatFinder = choices("RepeatFinder", FINDERS)  # annotate --run
Format = choices("Format", OUTPUT_FORMATS)  # query ... --format
Tail = choices("Tail", TAILS)  # query anomalies|enrichment, export bed --tail
By = choices("By", GROUPINGS)  # query enrichment --by
IndexType = choices("IndexType", TYPES)  # index build --type
Metric = choices("Metric", METRICS)  # index build --metric
AblationMethod = choices("AblationMethod", ABLATION_METHODS)  # probe --method, query --ablation-method
ProbeLikelihood = choices("ProbeLikelihood", RESCORE_LIKELIHOODS)  # probe --likelihood

# --- choices of the CLI alone (the library takes a bool or checks the value itself) ----------

Embeddings = choices("Embeddings", ("float16", "none"))  # ingest: embeddings=True/False
Names = choices("Names", ("auto", "exact"))  # annotate --names

# --- options shared by several commands -----------------------------------------------------


def atlas_option(help: str = "Atlas directory.", default: Any = ...) -> Any:
    return typer.Option(default, "--atlas", "-a", help=help)


def json_option(help: str = "Print as JSON.") -> Any:
    return typer.Option(False, "--json", help=help)


def progress_option(help: str = "Show a progress bar.") -> Any:
    return typer.Option(True, "--progress/--no-progress", help=help)


def address_option(help: str) -> Any:
    return typer.Option(None, "--address", help=help)


ATLAS = atlas_option()
PROGRESS = progress_option()

# the anomaly parameters (seqatlas.query.AnomalyParams) of query anomalies|enrichment and export
COLUMN = typer.Option(None, "--column", help="Score column (default: logp; logp_unmasked for "
                      "unmasked atlases; the strand mean with --strands both).")
Z = typer.Option(3.0, "--z", help="|robust z| threshold (median/MAD per reference letter).")
TAIL = typer.Option(Tail.both, "--tail", help="Anomalously likely (high), unlikely (low), both.")
SMOOTH = typer.Option(1, "--smooth", help="Rolling mean of z over W positions (1: none).")
MIN_LENGTH = typer.Option(3, "--min-length", help="Anomalous positions in a row to make a "
                          "region.")
MAX_GAP = typer.Option(2, "--max-gap", help="Merge regions at most this many positions apart.")
SCORE_COLUMN = typer.Option(None, "--score-column", help="Column z is computed from (default "
                            "as in `query anomalies`).")

# the result options of the query commands
FORMAT = typer.Option(Format.table, "--format", "-f", help="Output format.")
OUTPUT = typer.Option(None, "--output", "-o", help="Write to this file.")
