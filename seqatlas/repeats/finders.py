"""Running tantan or Tandem Repeats Finder on an atlas's own sequences.

The residues come from the FASTA files the atlas was built from (the ``source`` column of
``sequences``), each checked against the atlas's sha1 of its uppercase residues. When a source
file has moved or changed, a sequence is rebuilt from ``positions.ref`` instead, if the
atlas holds all its positions (``ref`` is the uppercase letter, so this is exact and checked
against the same sha1). The sequences go to a temporary FASTA in uppercase (soft-masked
bases are searched like the others; RNA's U is written as T), the program runs in a temporary
directory (TRF writes files into its working directory), and its output is streamed through
the importers of :mod:`seqatlas.repeats.formats` and committed as one unit of the ``repeats``
table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from seqatlas import schema
from seqatlas.store import AtlasReader
from seqatlas.errors import ConfigError, FastaError, InputError, ToolError
from seqatlas.progress import Meter
from seqatlas.fasta import read_fasta
from seqatlas.repeats.formats import parse_repeats
from seqatlas.repeats.importer import check_within, commit_repeats


@dataclass(frozen=True)
class Finder:
    """How to run one repeat finder and read its output."""

    program: str
    kinds: tuple[str, ...]
    output_format: str  # an importer of seqatlas.repeats.formats
    install: str  # what to do when the program is not on PATH
    command: Callable[[str, str, list[str]], list[str]]  # (executable, fasta, args) -> argv
    default_args: Callable[[str], list[str]]  # kind -> parameters
    check_args: Callable[[list[str]], None]
    sequence_of: Callable[[str], str | None]  # the sequence an output line is about
    ok_returncodes: tuple[int, ...] = (0,)


def _tantan_args(args: list[str]) -> None:
    if any(a.startswith("-f") for a in args):
        raise ConfigError("--run-args must not set tantan's output type (-f): seqatlas runs "
                          "tantan -f4 and imports its tandem repeats")


TRF_DEFAULT = ["2", "7", "7", "80", "10", "50", "500"]


def _trf_args(args: list[str]) -> None:
    numbers = args[:7]
    if len(numbers) < 7 or not all(a.isdigit() for a in numbers):
        raise ConfigError(
            f"--run-args for trf starts with its 7 parameters Match Mismatch Delta PM PI "
            f"Minscore MaxPeriod as whole numbers (default {' '.join(TRF_DEFAULT)}), optionally "
            f"followed by options such as -l 6 or -r; got {shlex.join(args)!r}")


FINDERS = {
    "tantan": Finder(
        program="tantan", kinds=("dna", "rna", "protein"), output_format="tantan-f4",
        install="tantan is not installed: install the Debian package tantan (apt-get install "
                "tantan) or the bioconda package (conda install -c bioconda tantan), or build "
                "it from https://gitlab.com/mcfrith/tantan, and put it on PATH",
        command=lambda exe, fasta, args: [exe, *args, "-f4", fasta],
        default_args=lambda kind: ["-p"] if kind == "protein" else [],
        check_args=_tantan_args,
        sequence_of=lambda line: line.split("\t", 1)[0]),
    "trf": Finder(
        program="trf", kinds=("dna", "rna"), output_format="trf-ngs",
        install="trf is not installed: install the Debian package trf (apt-get install trf) or "
                "the bioconda package (conda install -c bioconda trf), or download Tandem "
                "Repeats Finder from https://github.com/Benson-Genomics-Lab/TRF, and put it on "
                "PATH",
        command=lambda exe, fasta, args: [exe, fasta, *args, "-h", "-ngs"],
        default_args=lambda kind: list(TRF_DEFAULT),
        check_args=_trf_args,
        sequence_of=lambda line: line[1:].split(None, 1)[0] if line.startswith("@") and
        line[1:].split() else None,
        # TRF 4.09 -ngs exits with -3 ("nothing processed") after a successful run
        ok_returncodes=(0, 253)),
}


def program_version(program: str, executable: str) -> str:
    """The program's version as it reports it ('unknown' when it does not say)."""
    flag = "--version" if program == "tantan" else "-v"
    try:
        done = subprocess.run([executable, flag], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = done.stdout + done.stderr
    match = re.search(r"Version\s+(\S+)", text) or re.search(rf"{program}\s+(\S+)", text)
    return match.group(1) if match else "unknown"


def _from_positions(atlas: AtlasReader, row: dict) -> bytes | None:
    """A sequence rebuilt from ``positions.ref``, or None when the atlas lacks some of it."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    paths = atlas.part_paths("positions")
    if not paths:
        return None
    table = atlas.dataset(paths, schema.POSITIONS).to_table(
        columns=["pos", "ref"], filter=ds.field("seq_id") == row["seq_id"])
    if table.num_rows != row["length"]:
        return None
    refs = table.sort_by("pos")["ref"].combine_chunks()
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(refs)], pa.int32()), refs),
                            "")
    return joined[0].as_py().encode("ascii")


def atlas_residues(atlas: AtlasReader) -> Iterator[tuple[str, bytes, str]]:
    """(seq_id, uppercase residues, "source" or "positions") for every atlas sequence."""
    kind = atlas.manifest.kind
    by_source: dict[str, dict[str, dict]] = {}
    for row in atlas.sequences(columns=["seq_id", "length", "source", "sha1"]).to_pylist():
        by_source.setdefault(row["source"], {})[row["seq_id"]] = row
    for source, wanted in by_source.items():
        done: set[str] = set()
        problem = "is missing"
        if source and os.path.isfile(source):
            problem = "has changed (the sequence's sha1 differs from the atlas's)"
            try:
                for record in read_fasta(source, kind=kind):
                    row = wanted.get(record.id)
                    residues = record.sequence.upper()
                    if row is not None and hashlib.sha1(residues).hexdigest() == row["sha1"]:
                        done.add(record.id)
                        yield record.id, residues, "source"
            except FastaError:
                pass  # rewritten into something else: the atlas's own copy may still do
        for seq_id, row in wanted.items():
            if seq_id in done:
                continue
            residues = _from_positions(atlas, row)
            if residues is None or hashlib.sha1(residues).hexdigest() != row["sha1"]:
                raise InputError(
                    f"{atlas.path}: cannot read the residues of {seq_id!r}: its source file "
                    f"{source} {problem}, and the atlas's positions table does not hold all of "
                    f"it. Put the original FASTA back at {source}, or run the repeat finder "
                    "yourself and import its output with `seqatlas annotate FILE`.")
            yield seq_id, residues, "positions"


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:]) or "(nothing on stderr)"


def run_repeat_finder(atlas: str | Path, program: str, *, args: str | None = None,
                      progress: bool | str = True) -> dict:
    """Run ``program`` ("tantan" or "trf") on the atlas's sequences and import its repeats.

    ``args`` replaces the program's parameters (tantan: none, ``-p`` for proteins; trf:
    ``2 7 7 80 10 50 500``); seqatlas adds the output options (tantan ``-f4``, trf ``-h
    -ngs``). The program's version and parameters go into the unit's metadata, and the same
    run on the same sequences is not repeated. Nothing is committed when the program fails.
    """
    finder, executable = _finder(program)
    opened = AtlasReader(atlas)
    kind = opened.manifest.kind
    arguments = _arguments(finder, program, kind, args)
    sequences = opened.sequences(columns=["seq_id", "length", "sha1"]).to_pylist()
    if not sequences:
        raise InputError(f"{opened.path} holds no sequences; ingest a FASTA file first")
    found_version = program_version(program, executable)
    key = "repeats-" + hashlib.sha256(json.dumps(
        [program, found_version, arguments, [(r["seq_id"], r["sha1"]) for r in sequences]])
        .encode()).hexdigest()
    summary = {"file": None, "run": program, "version": found_version,
               "args": shlex.join(arguments), "format": finder.output_format, "renamed": {}}
    committed = opened.manifest.units.get(key)
    if committed is not None:
        return {**summary, "repeats": committed["repeats"], "already_imported": True}

    with tempfile.TemporaryDirectory(prefix=f"seqatlas-{program}-") as tmp:
        written = _write_fasta(atlas_residues(opened), kind, Path(tmp) / "atlas.fa")
        argv = finder.command(executable, "atlas.fa", arguments)
        shown = shlex.join([program, *argv[1:]])
        table = _run_with_progress(finder, program, argv, shown, Path(tmp), written, progress)
    _check_output(table, {r["seq_id"]: r["length"] for r in sequences}, shown)
    unit = {"repeat_finder": program, "version": found_version, "args": arguments,
            "command": shown, "format": finder.output_format, "sequences": len(sequences),
            "residues_from": written.origins, "repeats": table.num_rows}
    done = not commit_repeats(atlas, key, table, unit)
    return {**summary, "repeats": table.num_rows, "already_imported": done}


def _finder(program: str) -> tuple[Finder, str]:
    """The finder called ``program`` and its executable on PATH."""
    if program not in FINDERS:
        raise ConfigError(f"--run must be one of {', '.join(FINDERS)}, not {program!r}")
    finder = FINDERS[program]
    executable = shutil.which(finder.program)
    if executable is None:
        raise ToolError(finder.install)
    return finder, executable


def _arguments(finder: Finder, program: str, kind: str, args: str | None) -> list[str]:
    """The program's parameters for an atlas of ``kind``: ``args`` split into words, else
    the finder's defaults; checked."""
    if kind not in finder.kinds:
        raise ConfigError(f"{program} finds repeats in {' and '.join(finder.kinds)}; this atlas "
                          f"holds {kind} sequences: use --run tantan")
    try:
        arguments = finder.default_args(kind) if args is None else shlex.split(args)
    except ValueError as exc:
        raise ConfigError(f"--run-args {args!r} cannot be split into words: {exc}") from None
    finder.check_args(arguments)
    return arguments


@dataclass
class _Written:
    """What went into the temporary FASTA."""

    names: dict[str, str]  # FASTA name -> seq_id
    starts: dict[str, int]  # FASTA name -> residues written before it
    origins: dict[str, int]  # "source" / "positions" -> sequences read from there
    residues: int  # in all


def _write_fasta(residues: Iterator[tuple[str, bytes, str]], kind: str,
                 path: Path) -> _Written:
    """The sequences as a FASTA under plain names (TRF keeps only the first 199 characters
    of a name), 80 residues a line, RNA's U written as T."""
    written = _Written({}, {}, {"source": 0, "positions": 0}, 0)
    with open(path, "wb") as fasta:
        for index, (seq_id, letters, origin) in enumerate(residues):
            name = f"s{index}"
            written.names[name], written.starts[name] = seq_id, written.residues
            written.origins[origin] += 1
            written.residues += len(letters)
            if kind == "rna":
                letters = letters.replace(b"U", b"T")
            fasta.write(b">" + name.encode() + b"\n")
            for i in range(0, len(letters), 80):
                fasta.write(letters[i:i + 80] + b"\n")
    return written


def _run_with_progress(finder: Finder, program: str, argv: list[str], shown: str, cwd: Path,
                       written: _Written, progress: bool | str) -> pa.Table:
    """Run ``argv`` in ``cwd`` and import its output as it streams, a progress bar following
    the sequence it reports on; a ToolError (with its stderr's end) when it fails."""
    bar = Meter(label=program, unit="residues", total=written.residues, progress=progress)

    def watched(lines):
        for line in lines:
            name = finder.sequence_of(line)
            if name in written.starts:
                bar.update(written.starts[name])
            yield line

    with open(cwd / "stderr.txt", "wb") as stderr, bar:
        try:
            process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr,
                                       text=True, errors="replace")
        except OSError as exc:
            raise ToolError(f"cannot start {argv[0]}: {exc}; {finder.install}") from None
        try:
            table = parse_repeats(watched(process.stdout), format=finder.output_format,
                                  label=f"the output of `{shown}`", source=program,
                                  rename=written.names)
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        if returncode not in finder.ok_returncodes:
            raise ToolError(f"`{shown}` failed with exit status {returncode}; nothing was "
                            "committed. Its stderr ends with:\n" + _tail(cwd / "stderr.txt"))
        bar.update(written.residues)
    return table


def _check_output(table: pa.Table, lengths: dict[str, int], shown: str) -> None:
    """Every reported repeat lies on a sequence the program was given, inside it."""
    unknown = sorted(set(table["seq_id"].to_pylist()) - set(lengths))
    if unknown:
        raise ToolError(f"`{shown}` reported sequences it was not given "
                        f"({', '.join(unknown[:5])})")
    check_within(table, lengths, f"the output of `{shown}`")
