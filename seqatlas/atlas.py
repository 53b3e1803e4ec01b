"""``Atlas``: the facade over one atlas directory. Reading comes from
:class:`seqatlas.store.AtlasReader`; the query methods call the ``query`` layer."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pyarrow as pa

from seqatlas import probe as _probe
from seqatlas import query as _query
from seqatlas.checkpoints.recorded import recorded_settings
from seqatlas.errors import AtlasError, InputError
from seqatlas.manifest import InputRecord
from seqatlas.store import AtlasReader, AtlasWriter, PartDamage
from seqatlas.util import STDIN, file_sha256, is_stream, stream_name
from seqatlas.variants.score import score_variants as _score_variants

__all__ = ["Atlas", "AtlasWriter", "compact", "info", "log", "repair", "upgrade", "verify"]


class Atlas(AtlasReader):
    """An atlas directory, readable as Arrow tables and queryable with SQL.

    >>> atlas = Atlas("my_atlas")          # doctest: +SKIP
    >>> atlas.positions(columns=["seq_id", "pos", "logp"])  # doctest: +SKIP
    """

    def sql(self, query: str, *, timeout: float | None = None, **options) -> pa.Table:
        """Run one read-only SELECT over the views (sequences, positions, tokens, repeats,
        position_z, anomalies, anomaly_regions); see :func:`seqatlas.query.sql`."""
        return _query.sql(self, query, config=_query.SqlConfig(timeout=timeout), **options)

    def anomalies(self, *, with_repeats: bool = False, **params) -> pa.Table:
        """Anomalous regions; ``params`` are :class:`seqatlas.query.AnomalyParams` fields."""
        return _query.anomalies(self, params=_query.AnomalyParams(**params),
                               with_repeats=with_repeats)

    def enrichment(self, *, by: str = "class", **params) -> pa.Table:
        """Anomaly enrichment per repeat group; see :func:`seqatlas.query.enrichment`."""
        return _query.enrichment(self, by=by, params=_query.AnomalyParams(**params))

    def knn(self, *, kmer=None, at=None, sequence=None, **options) -> pa.Table:
        """Nearest tokens of k-mers, stored tokens (``at="SEQ:POS"``) or sequences in
        embedding space; ``options`` are :class:`seqatlas.query.KnnConfig` fields."""
        return _query.knn(self, kmer=kmer, at=at, sequence=sequence, **options)

    def similar(self, *, seq_id=None, sequence=None, fasta=None, **options) -> pa.Table:
        """Nearest sequences or bins in pooled-embedding space; ``options`` are
        :class:`seqatlas.query.SimilarConfig` fields (see :func:`seqatlas.query.similar`)."""
        return _query.similar(self, seq_id=seq_id, sequence=sequence, fasta=fasta, **options)

    def probe_icl(self, **options):
        """Rescore the atlas's in-context copies with the partner and a matched control
        corrupted (``ablations`` table); ``options`` are :class:`seqatlas.probe.IclConfig`
        fields. Returns the :class:`seqatlas.probe.IclReport`."""
        report = _probe.probe_icl(self.path, **options)
        self.manifest = AtlasReader(self.path).manifest  # the new parts are visible here
        return report

    def score_variants(self, variants, **options):
        """The LLR of each variant (a file's path, or mutant strings); ``options`` are
        :class:`seqatlas.variants.score.VariantConfig` fields. Returns the
        :class:`~seqatlas.variants.score.VariantScores`."""
        result = _score_variants(variants, atlas=self.path, **options)
        if result.stored_set is not None:
            self.manifest = AtlasReader(self.path).manifest
        return result

    def identity(self, **options) -> pa.Table:
        """Identity vs context agreement of embedding neighbours per stored layer;
        ``options`` are :class:`seqatlas.query.IdentityConfig` fields."""
        return _query.identity(self, **options)


def info(atlas: str | os.PathLike) -> dict:
    """Manifest summary, row counts and bytes on disk of an atlas."""
    return AtlasReader(atlas).summary()


def log(atlas: str | os.PathLike, *, limit: int | None = 20) -> dict:
    """The atlas's version history: its current version and its last ``limit`` commits
    (all with None), newest first, each with its time, operation and what it added or
    removed. An atlas written before the commit log has none until its next write."""
    if limit is not None and limit <= 0:
        raise InputError(f"--limit must be a positive number of commits, not {limit}")
    reader = AtlasReader(atlas)
    return {"atlas": str(reader.path), "version": reader.version,
            "commits": reader.history(limit) if reader.version is not None else []}


def compact(atlas: str | os.PathLike, *, tables: tuple[str, ...] | None = None,
            memory_limit: str | None = None) -> dict:
    """Rewrite the many per-unit parts of ``tables`` (positions and tokens by default) as
    few large files sorted by (seq_id, pos), swapped in by one commit; the results of every
    read stay the same and a re-ingest of the same input still finds nothing to do.
    ``memory_limit``: the most rows to hold while sorting (``2GB``, ``25%``; default a
    quarter of this machine's memory, at most 4 GiB)."""
    from seqatlas.query.sandbox import memory_limit_bytes
    from seqatlas.store import compact_atlas

    return compact_atlas(atlas, tables=tuple(tables) if tables else None,
                         memory_bytes=memory_limit_bytes(memory_limit) if memory_limit
                         else None)


def upgrade(atlas: str | os.PathLike) -> dict:
    """Give an atlas written before the commit log its log now (its next write would);
    one atomic replace of atlas.json. Returns whether anything changed."""
    with AtlasWriter(atlas) as writer:
        upgraded = writer.upgrade()
        return {"atlas": str(writer.path), "upgraded": upgraded, "version": writer.version}


def _input_problem(record: InputRecord) -> str | None:
    """Why the input file ``record`` names cannot rebuild the atlas, or None."""
    path = Path(record.path)
    if record.path == stream_name(STDIN) or is_stream(path):
        return (f"{record.path}: read from a stream, which cannot be read again; pipe the same "
                "input into `seqatlas ingest` with the atlas's settings instead")
    if not path.is_file():
        return f"{record.path}: not found"
    if path.stat().st_size != record.size or file_sha256(path) != record.sha256:
        return f"{record.path}: changed since it was ingested (size or SHA-256 differs)"
    return None


def verify(atlas: str | os.PathLike, *, inputs: bool = True) -> dict:
    """Re-hash every committed part of an atlas against the sizes and SHA-256 recorded at
    commit, and (``inputs``) check that its input FASTA files are still there unchanged,
    which :func:`repair` needs. ``ok`` is False when any part is damaged."""
    reader = AtlasReader(atlas)
    damage = reader.check_parts(full=True)
    parts = [(t, r) for t in reader.manifest.parts for r in reader.manifest.table_parts(t)
             .values()]
    return {
        "atlas": str(reader.path),
        "parts": len(parts),
        "parts_without_checksum": sum(1 for _, r in parts if r.sha256 is None),
        "damaged": [{"table": d.table, "part": d.name, "unit": d.unit, "problem": d.problem}
                    for d in damage],
        "inputs": [{"path": i.path, "problem": _input_problem(i)} for i in
                   reader.manifest.inputs] if inputs else [],
        "ok": not damage,
    }


def _rebuild_sequences(writer: AtlasWriter, damage: list[PartDamage]) -> None:
    """Write each damaged sequences part again from its input, with the ordinals and
    offsets the input was registered with (the same content key and part name)."""
    from seqatlas.scoring.plan import scan_input

    manifest = writer.manifest
    by_key = {"sequences-" + i.sha256: i for i in manifest.inputs}
    ordered = sorted(manifest.inputs, key=lambda i: i.first_ordinal or 0)
    skip = manifest.scoring.skip_n_runs or 0
    for d in damage:
        record = by_key.get(d.unit)
        if record is None:
            raise AtlasError(f"{writer.path}: sequences part {d.name} belongs to no recorded "
                             "input; re-ingest into a new --atlas directory")
        problem = _input_problem(record)
        if problem:
            raise InputError(f"cannot rebuild {d}: {problem}. Put the input back where it "
                             "was ingested from, then run repair again.")
        plan = scan_input(Path(record.path), record.kind, set(), skip_n_runs=skip)
        offset = sum(i.residues for i in ordered if (i.first_ordinal or 0) <
                     (record.first_ordinal or 0))
        for n, seq in enumerate(plan.sequences):
            seq.ordinal = (record.first_ordinal or 0) + n
            seq.global_start = seq.token_offset = offset
            offset += seq.length
        unit = {k: v for k, v in manifest.units.get(d.unit, {}).items() if k != "committed"}
        writer.commit(d.unit, {"sequences": plan.sequences_table()}, unit=unit)


def repair(atlas: str | os.PathLike, *, workers: int | None = None,
           progress: bool | str = True) -> dict:
    """Rewrite an atlas's damaged parts from its inputs: the sequences table from the input
    FASTA files, scored units by re-ingesting them with the atlas's own model and settings,
    imported or found repeats by importing or running the finder again, in-context copies
    by detecting them again. Ablations cannot be recomputed without the probe's selection,
    nor a stored variant set without its file: their damaged units are dropped and the
    report says what to re-run. Returns a report;
    raises when something could not be restored."""
    from seqatlas import repeats
    from seqatlas.scoring.pipeline import ingest

    reader = AtlasReader(atlas)
    damage = reader.check_parts(full=True)
    report = {"atlas": str(reader.path), "damaged": [str(d) for d in damage],
              "rescored_units": 0, "repeats_restored": 0, "rerun": []}
    if not damage:
        return report
    with AtlasWriter(atlas) as writer:
        _rebuild_sequences(writer, [d for d in damage if d.table == "sequences"])
        other = [d for d in damage if d.table != "sequences"]
        known = dict(writer.manifest.units)
        # every unit whose rows a damaged part held (all of a compacted part's)
        dropped = writer.drop_damaged(other) if other else set()
        records = {unit: known.get(unit, {}) for unit in sorted(dropped)}
        manifest = writer.manifest
    scored = [u for u, r in records.items() if "seq_ids" in r]
    if scored:
        missing = [p for i in manifest.inputs if (p := _input_problem(i))]
        if missing:
            raise InputError(f"cannot re-score {len(scored)} damaged unit(s): "
                             f"{'; '.join(missing)}. Put the inputs back, then run repair "
                             "again.")
        result = ingest([i.path for i in manifest.inputs], atlas=atlas, workers=workers,
                        progress=progress, **recorded_settings(manifest))
        report["rescored_units"] = result.units_scored
    for unit, record in records.items():
        if "repeats_file" in record:
            source = record["repeats_file"]
            if source == stream_name(STDIN) or is_stream(source):
                raise InputError(f"cannot restore the repeats imported from {source}, a "
                                 "stream that cannot be read again: pipe the same file into "
                                 f"`seqatlas annotate - --atlas {atlas}`")
            repeats.annotate(source, atlas=atlas, format=record["format"],
                             names="auto" if record.get("renamed") else "exact",
                             on_mismatch=record.get("on_mismatch", "error"))
        elif "repeat_finder" in record:
            repeats.annotate(atlas=atlas, run=record["repeat_finder"],
                             run_args=shlex.join(record["args"]), progress=progress)
        elif record.get("detector"):
            repeats.annotate(atlas=atlas, detect=True)
        elif record.get("command") == "pool":
            continue  # pooled again below, from the (repaired) tokens
        elif unit.startswith("variants-"):
            report["rerun"].append(
                f"seqatlas variants score FILE --atlas {atlas} --store "
                f"{record.get('variant_set')} with the variant file the set was stored from "
                "(its damaged part was dropped)")
            continue
        elif unit.startswith("ablations-"):
            report["rerun"].append(
                f"seqatlas probe icl --atlas {atlas} --method {record.get('method', 'mask')} "
                f"--seed {record.get('seed', 0)} --likelihood {record.get('likelihood')} "
                "with the same --where/--bed as before (only the dropped targets are probed)")
            continue
        else:
            continue
        report["repeats_restored"] += 1
    if any(r.get("command") == "pool" for r in records.values()):
        from seqatlas.scoring.pooling import pool

        report["pooled_rows_restored"] = pool(atlas)["rows_added"]
    left = AtlasReader(atlas).check_parts(full=True)
    if left:
        raise AtlasError(f"repair left {len(left)} part(s) damaged: "
                         f"{'; '.join(map(str, left[:5]))}")
    return report
