"""The CLI layer: its choices come from the library's tuples, shared options read the same in
every command, and commands give what the Python API gives."""

from __future__ import annotations

import enum
import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
import typer

import seqatlas
from seqatlas.checkpoints.tokenizers import FAMILIES
from seqatlas.cli import options
from seqatlas.cli.main import app, main
from seqatlas.fasta import KINDS
from seqatlas.index.build import TYPES
from seqatlas.index.search import METRICS
from seqatlas.index.vectors import LEVELS
from seqatlas.query import AnomalyParams
from seqatlas.query.output import OUTPUT_FORMATS
from seqatlas.query.repeat_enrichment import GROUPINGS
from seqatlas.query.tracks import EXPORT_FORMATS, SORT_ORDERS
from seqatlas.query.views import TAILS
from seqatlas.repeats.finders import FINDERS
from seqatlas.repeats.formats import FORMATS
from seqatlas.repeats.importer import ON_MISMATCH
from seqatlas.util import CHROM_STYLES
from seqatlas.schema import ABLATION_METHODS, DISTRIBUTION_CHOICES, POOLINGS
from seqatlas.variants.formats import FORMATS as VARIANT_FORMATS
from seqatlas.progress import MODES as PROGRESS_MODES
from seqatlas.scoring.ablation import RESCORE_LIKELIHOODS
from seqatlas.scoring.scorer import LIKELIHOOD_MODES, PRECISIONS, STRANDS
from seqatlas.scoring.workers import WRITE_PARTS
from tests.query_data import make_atlas

ROOT = Path(__file__).resolve().parents[1]

# every CLI choice enum and the library tuple it must equal, value for value and in order
FROM_LIBRARY = {
    options.Kind: KINDS,
    options.Likelihood: LIKELIHOOD_MODES,
    options.Strands: STRANDS,
    options.WriteParts: WRITE_PARTS,
    options.Tokenizer: FAMILIES,
    options.RepeatFormat: FORMATS,
    options.RepeatFinder: tuple(FINDERS),
    options.Format: OUTPUT_FORMATS,
    options.Tail: TAILS,
    options.By: GROUPINGS,
    options.IndexType: TYPES,
    options.Metric: METRICS,
    options.AblationMethod: ABLATION_METHODS,
    options.ProbeLikelihood: RESCORE_LIKELIHOODS,
    options.OnMismatch: ON_MISMATCH,
    options.Distributions: DISTRIBUTION_CHOICES,
    options.VariantFormat: VARIANT_FORMATS,
    options.SortOrder: SORT_ORDERS,
    options.ChromNames: CHROM_STYLES,
    options.Progress: PROGRESS_MODES,
    options.Pooling: POOLINGS,
    options.Level: LEVELS,
    options.Precision: PRECISIONS,
}
# choices of the CLI alone: the library takes a bool (embeddings) or checks names itself
CLI_ONLY = {options.Embeddings: ("float16", "none"), options.Names: ("auto", "exact")}


def _commands(typer_app: typer.Typer, prefix: tuple[str, ...] = ()):
    """(command path, callback) of every command, subcommand groups included."""
    for command in typer_app.registered_commands:
        yield (*prefix, command.name or command.callback.__name__), command.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, (*prefix, group.name))


def _enums_of(callback) -> dict[str, type[enum.Enum]]:
    """The parameters of a command whose type is (Optional, list of) an Enum."""
    found = {}
    for name, hint in typing.get_type_hints(callback).items():
        for candidate in (hint, *typing.get_args(hint)):
            for inner in (candidate, *typing.get_args(candidate)):
                if isinstance(inner, type) and issubclass(inner, enum.Enum):
                    found[name] = inner
    return found


@pytest.mark.parametrize("choice", list(FROM_LIBRARY), ids=lambda e: e.__name__)
def test_cli_choices_equal_the_library_tuples(choice):
    assert [m.value for m in choice] == list(FROM_LIBRARY[choice])
    assert issubclass(choice, str) and choice.__module__ == "seqatlas.cli.options"


def test_cli_only_choices():
    for choice, values in CLI_ONLY.items():
        assert [m.value for m in choice] == list(values)


def test_every_enum_a_command_takes_is_one_of_these():
    """A choice enum typed out in a command module (not from options.choices) fails here."""
    seen = {}
    for path, callback in _commands(app):
        for name, choice in _enums_of(callback).items():
            seen[" ".join(path) + " " + name] = choice
    assert seen, "no enum-typed options found: the walk over the commands is broken"
    unknown = {k: v.__name__ for k, v in seen.items() if v not in FROM_LIBRARY and v not in
               CLI_ONLY}
    assert not unknown
    assert set(seen.values()) == set(FROM_LIBRARY) | set(CLI_ONLY)  # none left unused


def test_export_commands_are_the_library_formats():
    export_app = next(g.typer_instance for g in app.registered_groups if g.name == "export")
    assert sorted(c.name for c in export_app.registered_commands) == sorted(EXPORT_FORMATS)


# where each choice enum's tuple lives, for patching before the CLI is imported
SOURCES = {"Kind": "seqatlas.fasta:KINDS", "Likelihood": "seqatlas.scoring.scorer:LIKELIHOOD_MODES",
           "Strands": "seqatlas.scoring.scorer:STRANDS",
           "WriteParts": "seqatlas.scoring.workers:WRITE_PARTS",
           "Tokenizer": "seqatlas.checkpoints.tokenizers:FAMILIES",
           "RepeatFormat": "seqatlas.repeats.formats:FORMATS",
           "RepeatFinder": "seqatlas.repeats.finders:FINDERS",
           "Format": "seqatlas.query.output:OUTPUT_FORMATS", "Tail": "seqatlas.query.views:TAILS",
           "By": "seqatlas.query.repeat_enrichment:GROUPINGS",
           "IndexType": "seqatlas.index.build:TYPES", "Metric": "seqatlas.index.search:METRICS",
           "AblationMethod": "seqatlas.schema:ABLATION_METHODS",
           "ProbeLikelihood": "seqatlas.scoring.ablation:RESCORE_LIKELIHOODS",
           "OnMismatch": "seqatlas.repeats.importer:ON_MISMATCH",
           "Distributions": "seqatlas.schema:DISTRIBUTION_CHOICES",
           "VariantFormat": "seqatlas.variants.formats:FORMATS",
           "SortOrder": "seqatlas.query.tracks:SORT_ORDERS",
           "ChromNames": "seqatlas.util:CHROM_STYLES",
           "Progress": "seqatlas.progress:MODES", "Pooling": "seqatlas.schema:POOLINGS",
           "Level": "seqatlas.index.vectors:LEVELS",
           "Precision": "seqatlas.scoring.scorer:PRECISIONS"}


def test_sources_name_every_library_choice():
    assert sorted(SOURCES) == sorted(e.__name__ for e in FROM_LIBRARY)


def test_a_value_added_to_the_library_reaches_the_cli():
    """Each tuple gets a new value before the CLI is imported: every enum and --help has it
    (a choice typed out instead of built from the library tuple fails here)."""
    code = f"""
import importlib
for name, source in {SOURCES!r}.items():
    module, attribute = source.split(":")
    module = importlib.import_module(module)
    values = getattr(module, attribute)
    added = {{**values, "novel-1": None}} if isinstance(values, dict) else (*values, "novel-1")
    setattr(module, attribute, added)
from seqatlas.cli import options
from seqatlas.cli.main import main
for name in {sorted(SOURCES)!r}:
    assert getattr(options, name).novel_1.value == "novel-1", name
main(["ingest", "--help"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"COLUMNS": "200", "PATH": "", "TERM": "dumb"},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exact|fast|unmasked|causal|none|novel-1" in done.stdout


SHARED_FLAGS = ("--z", "--tail", "--smooth", "--min-length", "--max-gap", "--score-column",
                "--timeout", "--progress")


def _click_params(command, path=()):
    for param in command.params:
        yield path, param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _click_params(sub, (*path, name))


def test_shared_options_read_the_same_everywhere():
    """A flag that several commands take has one default and one help text (those with a
    command-specific meaning, like --column or --output, are left out)."""
    by_flag: dict[str, set] = {}
    for path, param in _click_params(typer.main.get_command(app)):
        for flag in param.opts:
            if path[:1] == ("variants",) and flag == "--score-column":
                continue  # a variant file's measured scores (ProteinGym's DMS_score)
            if flag in SHARED_FLAGS or (flag == "--format" and path[0] == "query"):
                default = getattr(param.default, "value", param.default)
                by_flag.setdefault(flag, set()).add((repr(default), param.help))
    assert set(by_flag) == set(SHARED_FLAGS) | {"--format"}
    assert {flag: variants for flag, variants in by_flag.items() if len(variants) > 1} == {
        "--progress": {("'auto'", options.PROGRESS_HELP),
                       ("'auto'", f"With --run: {options.PROGRESS_HELP}")}}


def test_anomaly_options_are_the_shared_ones():
    for path, callback in _commands(app):
        for name, parameter in inspect.signature(callback).parameters.items():
            shared = {"z": options.Z, "tail": options.TAIL, "smooth": options.SMOOTH,
                      "min_length": options.MIN_LENGTH, "max_gap": options.MAX_GAP,
                      "score": options.SCORE_COLUMN}.get(name)
            if shared is not None:
                assert parameter.default is shared, (path, name)


# --- CLI and Python give the same -------------------------------------------------------------

RNG = np.random.default_rng(11)
SEQS = {"s1": "".join(RNG.choice(list("ACGT"), 300)), "s2": "".join(RNG.choice(list("ACGT"), 200))}


def _scores():
    rng = np.random.default_rng(5)
    scores = {k: rng.normal(-1.3, 0.2, len(v)) for k, v in SEQS.items()}
    scores["s1"][40:52] = -5.0  # unlikely
    scores["s1"][200:206] = 0.0  # likely
    scores["s2"][100:110] = -4.0  # unlikely
    scores["s2"][150:160] = np.nan  # unscored
    return scores


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    return make_atlas(tmp_path_factory.mktemp("cli") / "atlas", SEQS, _scores(),
                      repeats=[("s1", 30, 60, "L1HS", "LINE", "L1")])


def test_anomalies_with_every_shared_option_match_the_api(atlas, tmp_path):
    params = AnomalyParams(column="logp", z=2.5, tail="low", smooth=3, min_length=2, max_gap=0)
    api = seqatlas.query.anomalies(atlas, params=params)
    assert api.num_rows >= 2
    out = tmp_path / "regions.csv"
    assert main(["query", "anomalies", "--atlas", str(atlas), "--column", "logp", "--z", "2.5",
                 "--tail", "low", "--smooth", "3", "--min-length", "2", "--max-gap", "0",
                 "--format", "csv", "--output", str(out)]) == 0
    cli = pacsv.read_csv(out)
    key = ("seq_id", "start", "end")
    assert [tuple(r[k] for k in key) for r in cli.to_pylist()] == \
        [tuple(r[k] for k in key) for r in api.to_pylist()]


def test_enrichment_json_matches_the_api(atlas, capsys):
    api = seqatlas.query.enrichment(atlas, by="family",
                                    params=AnomalyParams(z=2.0, tail="low")).to_pylist()
    assert main(["query", "enrichment", "--atlas", str(atlas), "--by", "family", "--z", "2",
                 "--tail", "low", "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    fields = ("group", "n_inside", "anomalous_inside", "n_outside", "anomalous_outside")
    assert [[r[f] for f in fields] for r in cli] == [[r[f] for f in fields] for r in api]


def test_export_bedgraph_matches_the_api(atlas, tmp_path):
    params = AnomalyParams(column="logp", smooth=5)
    seqatlas.export(atlas, format="bedgraph", output=tmp_path / "api.bedgraph", params=params)
    assert main(["export", "bedgraph", "--atlas", str(atlas), "--smooth", "5",
                 "--score-column", "logp", "-o", str(tmp_path / "cli.bedgraph")]) == 0
    cli = (tmp_path / "cli.bedgraph").read_text()
    assert cli and cli == (tmp_path / "api.bedgraph").read_text()
    unsmoothed = tmp_path / "plain.bedgraph"
    assert main(["export", "bedgraph", "--atlas", str(atlas), "-o", str(unsmoothed)]) == 0
    assert unsmoothed.read_text() != cli  # --smooth reached the library


def test_usage_errors_exit_2_with_a_message(atlas, capsys):
    """A value outside the library tuple, or an unknown option: click's usage error, whether
    the installed Typer raises click's ClickException or its own vendored copy."""
    assert main(["query", "anomalies", "--atlas", str(atlas), "--tail", "sideways"]) == 2
    assert "'sideways' is not one of 'high', 'low', 'both'" in capsys.readouterr().err
    assert main(["index", "build", "--atlas", str(atlas), "--type", "kd-tree"]) == 2
    assert "kd-tree" in capsys.readouterr().err
    assert main(["query", "anomalies", "--atlas", str(atlas), "--bogus"]) == 2
    assert "No such option: --bogus" in capsys.readouterr().err
