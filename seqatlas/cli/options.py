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
from seqatlas.index.vectors import LEVELS
from seqatlas.progress import MODES as PROGRESS_MODES
from seqatlas.schema import POOLINGS
from seqatlas.query.output import OUTPUT_FORMATS
from seqatlas.query.repeat_enrichment import GROUPINGS
from seqatlas.query.tracks import SORT_ORDERS
from seqatlas.query.views import TAILS
from seqatlas.repeats.finders import FINDERS
from seqatlas.repeats.formats import FORMATS
from seqatlas.repeats.importer import ON_MISMATCH
from seqatlas.schema import DISTRIBUTION_CHOICES
from seqatlas.variants.formats import FORMATS as VARIANT_FORMATS
from seqatlas.util import CHROM_STYLES
from seqatlas.schema import ABLATION_METHODS
from seqatlas.scoring.ablation import RESCORE_LIKELIHOODS
from seqatlas.scoring.scorer import LIKELIHOOD_MODES, PRECISIONS, STRANDS
from seqatlas.scoring.workers import WRITE_PARTS


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
WriteParts = choices("WriteParts", WRITE_PARTS)  # ingest --write-parts
Distributions = choices("Distributions", DISTRIBUTION_CHOICES)  # ingest --distributions
Precision = choices("Precision", PRECISIONS)  # ingest --precision
VariantFormat = choices("VariantFormat", VARIANT_FORMATS)  # variants score --input-format
Tokenizer = choices("Tokenizer", FAMILIES)  # ingest --tokenizer
RepeatFormat = choices("RepeatFormat", FORMATS)  # annotate --format
RepeatFinder = choices("RepeatFinder", FINDERS)  # annotate --run
Format = choices("Format", OUTPUT_FORMATS)  # query ... --format
Tail = choices("Tail", TAILS)  # query anomalies|enrichment, export bed --tail
By = choices("By", GROUPINGS)  # query enrichment --by
IndexType = choices("IndexType", TYPES)  # index build --type
Metric = choices("Metric", METRICS)  # index build --metric
Pooling = choices("Pooling", POOLINGS)  # index build, query similar, plot embedding --pooling
Level = choices("Level", LEVELS)  # index build --level
AblationMethod = choices("AblationMethod", ABLATION_METHODS)  # probe --method, query --ablation-method
ProbeLikelihood = choices("ProbeLikelihood", RESCORE_LIKELIHOODS)  # probe --likelihood
OnMismatch = choices("OnMismatch", ON_MISMATCH)  # annotate --on-mismatch
SortOrder = choices("SortOrder", SORT_ORDERS)  # export --sort
ChromNames = choices("ChromNames", CHROM_STYLES)  # export --chrom-names

# --- choices of the CLI alone (the library takes a bool or checks the value itself) ----------

Embeddings = choices("Embeddings", ("float16", "none"))  # ingest: embeddings=True/False
Names = choices("Names", ("auto", "exact"))  # annotate --names
Progress = choices("Progress", PROGRESS_MODES)  # --progress (the library takes it, or a bool)

# --- options shared by several commands -----------------------------------------------------


def atlas_option(help: str = "Atlas: a directory, or a URI (s3:// and others).",
                 default: Any = ...) -> Any:
    return typer.Option(default, "--atlas", "-a", help=help)


def json_option(help: str = "Print as JSON.") -> Any:
    return typer.Option(False, "--json", help=help)


# the interval's environment variable is in the README: a 26-letter word cannot wrap in the
# help column at 80 characters
PROGRESS_HELP = ("Progress on stderr: bar (redrawn in place), log (a plain line every 10 s) "
                 "or none; auto: bar when stderr is a terminal, else log.")
_NO_PROGRESS = "seqatlas.no_progress"  # ctx.meta key: --no-progress was given


def _progress_mode(ctx: typer.Context, param: typer.CallbackParam, value):
    """``--progress``'s value; ``none`` when ``--no-progress`` came first and ``--progress``
    was not given (a later ``--progress`` wins)."""
    source = ctx.get_parameter_source(param.name)
    if ctx.meta.get(_NO_PROGRESS) and getattr(source, "name", None) != "COMMANDLINE":
        return Progress.none
    return value


def _no_progress(ctx: typer.Context, value: bool) -> bool:
    """``--no-progress``: ``--progress none`` (the last of the two given wins)."""
    if value:
        ctx.meta[_NO_PROGRESS] = True
        if "progress" in ctx.params:
            ctx.params["progress"] = Progress.none
    return value


def progress_option(help: str = PROGRESS_HELP) -> Any:
    """``--progress auto|bar|log|none``; give each command :data:`NO_PROGRESS` too."""
    return typer.Option(Progress.auto, "--progress", help=help, callback=_progress_mode)


# --no-progress, the same as --progress none (a parameter the command never reads)
NO_PROGRESS = typer.Option(False, "--no-progress", callback=_no_progress, expose_value=False,
                           help="Same as --progress none.")


def address_option(help: str) -> Any:
    return typer.Option(None, "--address", help=help)


ATLAS = atlas_option()

# the Ray actor resources of ingest and probe icl
GPUS_PER_WORKER = typer.Option(None, "--gpus-per-worker", help="GPUs per scoring actor "
                               "(default: 1 when Ray sees GPUs, else 0).")
CPUS_PER_WORKER = typer.Option(None, "--cpus-per-worker", help="CPUs per actor (default: all "
                               "/ workers); sets torch's threads.")
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
SCORE_COLUMN = typer.Option(None, "--score-column", help="Column z is computed from (default: "
                            "logp; logp_unmasked for unmasked atlases; the strand mean with "
                            "--strands both).")

# the result options of the query commands
FORMAT = typer.Option(Format.auto, "--format", "-f", help="Output format. auto: a table on a "
                      "terminal, else TSV (header and rows only; counts and notes go to "
                      "stderr); with --output, the format its suffix names (.tsv, .csv, .json, "
                      ".jsonl), else parquet. parquet to stdout needs a pipe or a file.")
# the same choices for the listings (models, index list), which have no --output
LIST_FORMAT = typer.Option(Format.auto, "--format", "-f", help="Output format. auto: a table "
                           "on a terminal, else TSV (header and rows only). parquet to stdout "
                           "needs a pipe or a file.")
OUTPUT = typer.Option(None, "--output", "-o", help="Write to this file.")
ABLATION_METHOD = typer.Option(None, "--ablation-method", help="Corruption method whose "
                               "`probe icl` values (net_gain, ...) to show (default: the only "
                               "one in the atlas; needed when it holds several).")


# identity vs context: `query identity` and `plot identity`
IDENTITY_SAMPLE = typer.Option(1000, "--sample", help="Tokens sampled.")
IDENTITY_LAYER = typer.Option(None, "--layer", help="Stored layer to test (repeatable; default: "
                              "every stored layer).")
IDENTITY_K = typer.Option(10, "-k", "--k", help="Neighbours per sampled token.")
IDENTITY_SEED = typer.Option(0, "--seed", help="Seed of the sample.")
IDENTITY_INDEX = typer.Option(None, "--index", help="Index to search (default: a built index "
                              "over the layer's column, else an exact in-memory search).")
IDENTITY_NPROBE = typer.Option(None, "--nprobe", help="IVF lists searched.")


def anomaly_params(column, z, tail, smooth, min_length, max_gap, ablation_method=None):
    """The AnomalyParams the anomaly options (--score-column, --z, --tail, ...) give."""
    from seqatlas.query import AnomalyParams

    return AnomalyParams(column=column, z=z, tail=tail.value, smooth=smooth,
                         min_length=min_length, max_gap=max_gap,
                         ablation_method=ablation_method.value if ablation_method else None)
