"""``probe icl``: how much of a position's likelihood comes from looking it up in its copy.

For every target (:mod:`seqatlas.probe.targets`) the target's positions are rescored in the
window they were scored from, with the partner corrupted and, separately, with a matched
control region corrupted the same way (:mod:`seqatlas.scoring.ablation`). The intact value is
the atlas's own ``logp`` when the atlas was scored in the probe's likelihood mode, else it is
recomputed. Rows go to the ``ablations`` table (:data:`seqatlas.schema.ABLATIONS`), committed
unit by unit with the atlas's commit protocol: a unit is content-keyed on the model, the
probe's settings and its targets, a re-run skips every target already probed with the same
method and seed, and a second probe with another likelihood mode is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.checkpoints.recorded import atlas_model_spec, recorded_engine
from seqatlas.errors import AtlasMismatchError, ConfigError, IngestError, describe_error
from seqatlas.probe.targets import DEFINITION_VERSION, Target, choose_control, split_runs
from seqatlas.progress import Meter
from seqatlas.query.sandbox import Sandbox
from seqatlas.query.engine import Engine
from seqatlas.repeats.copies import copy_runs, read_copies, seq_order
from seqatlas.repeats.formats import read_repeats
from seqatlas.scoring.ablation import (METHODS, RESCORE_LIKELIHOODS, RescoreTask, corrupt,
                                       region_rng, standard_letters)
from seqatlas.scoring.pipeline import model_identity
from seqatlas.scoring.workers import make_executor, run_units_timed
from seqatlas.store import AtlasReader, AtlasWriter

PROBE = "icl"


@dataclass(frozen=True)
class IclConfig:
    """Options of ``probe icl``; ``method``, ``seed`` and ``likelihood`` change the values."""

    method: str | None = None  # mask | shuffle | substitute (seqatlas.scoring.ablation);
    # None: mask, shuffle for a causal model (it has no mask token)
    seed: int = 0  # shuffle and substitute draws; recorded per row
    likelihood: str | None = None  # exact | fast | causal; None: the atlas's mode if one of
    # those, else exact (causal for a causal model)
    where: str | None = None  # SQL condition on position_z (or positions): targets with a match
    bed: str | Path | None = None  # BED file: targets overlapping an interval
    model: str | None = None  # the atlas's checkpoint, when its recorded path moved
    batch_tokens: int | None = None
    unit_tokens: int = 65536  # tokens computed per work unit
    workers: int | None = None  # 0: this process, no Ray
    gpus_per_worker: float | None = None
    cpus_per_worker: int | None = None
    address: str | None = None
    max_retries: int = 2
    progress: bool | str = True  # auto | bar | log | none

    def validate(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not "
                              f"{self.method!r}")
        if self.likelihood is not None and self.likelihood not in RESCORE_LIKELIHOODS:
            raise ConfigError(f"--likelihood must be one of {', '.join(RESCORE_LIKELIHOODS)} "
                              f"for a probe, not {self.likelihood!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be an integer in [0, 2**63), not {self.seed!r}")
        if self.where is not None and self.bed is not None:
            raise ConfigError("give --where or --bed, not both")
        for name in ("batch_tokens", "unit_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("--workers must be 0 (in process) or more")
        if self.max_retries < 0:
            raise ConfigError("--max-retries must be 0 or more")


@dataclass
class IclReport:
    """What a ``probe icl`` run did."""

    atlas: str
    likelihood: str
    method: str
    seed: int
    targets_total: int  # targets selected
    targets_skipped: int  # already probed with this method and seed
    targets_probed: int = 0
    positions_probed: int = 0
    units: int = 0
    controls: dict = field(default_factory=dict)  # control rule -> targets (this run)
    gains: list[dict] = field(default_factory=list)  # per copy strand, every row of this
    # method and seed: targets, positions, mean icl_gain, control_gain and net_gain
    intact_recomputed: bool = False
    seconds: float = 0.0
    real_tokens: int = 0
    computed_tokens: int = 0
    failed: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def probe_icl(atlas, **options) -> IclReport:
    """Rescore every selected target with its partner and a matched control corrupted; the
    rows go to the atlas's ``ablations`` table. Options as :class:`IclConfig`."""
    config = IclConfig(**options)
    config.validate()
    path = getattr(atlas, "path", atlas)
    # an atlas, or a clear error, before the writer's lock is taken
    config = _for_model(config, AtlasReader(path))
    with AtlasWriter(path) as writer:  # one probe at a time: what is done stays known
        report = _probe_locked(AtlasReader(path), writer, config)
    report.gains = _gains(path, config)
    if report.failed:
        ids = sorted({s for f in report.failed for s in f["seq_ids"]})
        raise IngestError(
            f"{len(report.failed)} probe unit(s) failed after {config.max_retries} retries "
            f"(sequences: {', '.join(ids[:20])}); last error: {report.failed[-1]['error']}. "
            "Everything else is committed: re-run the same command to retry only those.")
    return report


def _for_model(config: IclConfig, reader: AtlasReader) -> IclConfig:
    """``config`` with the atlas model's defaults (likelihood, method) filled in; what a
    causal model cannot do (a masked mode, the mask corruption) is refused."""
    causal = reader.manifest.model is not None and \
        reader.manifest.model.extra.get("objective") == "causal"
    recorded = reader.manifest.scoring.likelihood if reader.manifest.scoring else None
    likelihood = config.likelihood or (recorded if recorded in RESCORE_LIKELIHOODS else
                                       "causal" if causal else "exact")
    if (likelihood == "causal") != causal:
        raise ConfigError(f"--likelihood {likelihood} does not fit the atlas's "
                          f"{'causal' if causal else 'masked'} model: a causal model is probed "
                          "with --likelihood causal, a masked one with exact or fast")
    method = config.method or ("shuffle" if causal else "mask")
    if causal and method == "mask":
        raise ConfigError("the atlas's model is causal and has no mask token: corrupt with "
                          "--method shuffle or substitute")
    return replace(config, likelihood=likelihood, method=method)


def _probe_locked(reader: AtlasReader, writer: AtlasWriter, config: IclConfig) -> IclReport:
    _require_copies(reader)
    scoring = reader.manifest.scoring
    mode = config.likelihood
    _check_settings(reader, mode)
    spec = atlas_model_spec(reader, config.model)  # before any work: the weights must match
    names = seq_order(reader)
    copies = read_copies(reader)
    targets = split_runs(copy_runs(copies, names))
    if mode == "causal":  # only an upstream copy can be looked up on the scored strand
        targets = [t for t in targets if t.partner_end <= t.start]
    targets = _select(reader, targets, names, config)
    done = _probed(reader, names, config)
    todo = [t for t in targets if (t.seq, t.start, t.end) not in done]
    report = IclReport(atlas=str(reader.path), likelihood=mode, method=config.method,
                       seed=config.seed, targets_total=len(targets),
                       targets_skipped=len(targets) - len(todo),
                       intact_recomputed=scoring.likelihood != mode)
    if not todo:
        return report
    todo = with_controls(todo, copies, names, upstream=mode == "causal")
    for t in todo:
        report.controls[t.control_rule] = report.controls.get(t.control_rule, 0) + 1
    tokenizer = spec.tokenizer()
    settings = {"probe": PROBE, "likelihood": mode, "method": config.method,
                "seed": config.seed, "definition_version": DEFINITION_VERSION}
    engine = recorded_engine(scoring, mode)
    units = _plan_units(todo, mode=mode, stride=engine["fast_stride"] or tokenizer.fast_stride(),
                        budget=config.unit_tokens, recompute=report.intact_recomputed)
    source = _unit_items(reader, units, names, config=config, settings=settings,
                         fingerprint=model_identity(reader.manifest) + scoring.key(),
                         letters=tokenizer.letters, recompute=report.intact_recomputed)
    _run(config, spec, mode, writer, source, report, settings,
         total=sum(t.length for t in todo), names=names)
    return report


def _gains(path, config: IclConfig) -> list[dict]:
    """Mean gains per copy strand over the atlas's rows of this method and seed."""
    with Sandbox(path) as engine:
        table = engine.execute_internal(
            """SELECT copy_strand, count(DISTINCT (seq_id, target_start)) AS targets,
                      count(*) AS positions, avg(icl_gain) AS icl_gain,
                      avg(control_gain) AS control_gain, avg(net_gain) AS net_gain
               FROM ablations WHERE method = $method AND seed = $seed
               GROUP BY copy_strand ORDER BY copy_strand""",
            params={"method": config.method, "seed": config.seed}).fetchall()
    names = ("copy_strand", "targets", "positions", "icl_gain", "control_gain", "net_gain")
    return [dict(zip(names, row)) for row in table]


# -- selecting targets ------------------------------------------------------------------

def _require_copies(reader: AtlasReader) -> None:
    scoring = reader.manifest.scoring
    if scoring is None or not scoring.copy_k:
        raise ConfigError(
            f"{reader.path} has no in-context copy columns (it was ingested with --copy-k 0, "
            "or by a seqatlas before copy detection), and probe icl rescores the targets they "
            "define: re-ingest the FASTA into a new --atlas with the default --copy-k (12 for "
            "DNA/RNA, 6 for proteins), then run `seqatlas probe icl` on it")


def _check_settings(reader: AtlasReader, mode: str) -> None:
    for unit in reader.manifest.units.values():
        if unit.get("probe") != PROBE:
            continue
        was = (unit.get("likelihood"), unit.get("definition_version"))
        if was != (mode, DEFINITION_VERSION):
            raise AtlasMismatchError(
                f"{reader.path} holds ablations probed with --likelihood {was[0]} (target "
                f"definition {was[1]}); this probe would use --likelihood {mode} (definition "
                f"{DEFINITION_VERSION}), and rows of both would not be comparable. Pass "
                f"--likelihood {was[0]}, or probe a copy of the atlas.")


def _select(reader: AtlasReader, targets: list[Target], names: list[str],
            config: IclConfig) -> list[Target]:
    """The targets that hold a position matching ``--where`` or overlap a ``--bed`` interval."""
    if config.where is None and config.bed is None:
        return targets
    if config.bed is not None:
        table = read_repeats(Path(config.bed), format="bed")
        unknown = sorted(set(table["seq_id"].to_pylist()) - set(names))
        if unknown:
            raise ConfigError(f"{config.bed}: sequence names not in the atlas "
                              f"({', '.join(unknown[:5])}); the atlas has "
                              f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        seq = _seq_index(names, table["seq_id"].to_pylist())
        starts = table["start"].to_numpy()
        ends = np.maximum(table["end"].to_numpy(), starts + 1)  # an empty interval: its point
    else:
        rows = _where_positions(reader, config.where)
        seq = _seq_index(names, rows["seq_id"].to_pylist())
        starts = rows["pos"].to_numpy()
        ends = starts + 1
    hit = _overlapping(np.array([t.seq for t in targets], dtype=np.int64),
                       np.array([t.start for t in targets], dtype=np.int64),
                       np.array([t.end for t in targets], dtype=np.int64), seq, starts, ends)
    return [t for t, keep in zip(targets, hit) if keep]


def _seq_index(names: list[str], seq_ids: list[str]) -> np.ndarray:
    """Each of ``seq_ids`` as its index in the atlas's sequence order ``names``."""
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[s] for s in seq_ids], dtype=np.int64)


def _overlapping(seq, start, end, other_seq, other_start, other_end) -> np.ndarray:
    """Whether each interval overlaps at least one of the others (same sequence); on
    global coordinates, with a prefix maximum of the others' ends in start order."""
    shift = np.int64(1) << np.int64(40)
    if not len(other_seq):
        return np.zeros(len(seq), dtype=bool)
    g_start = other_seq * shift + other_start
    order = np.argsort(g_start, kind="stable")
    g_start = g_start[order]
    reach = np.maximum.accumulate((other_seq * shift + other_end)[order])
    before = np.searchsorted(g_start, seq * shift + end, side="left")  # others starting earlier
    found = before > 0
    found[found] &= reach[before[found] - 1] > (seq * shift + start)[found]
    return found


def _where_positions(reader: AtlasReader, where: str) -> pa.Table:
    with Engine(reader) as engine:
        view = "position_z" if engine.anomaly_column is not None else "positions"
        return engine.run(f"SELECT seq_id, pos FROM {view} WHERE copy_offset IS NOT NULL "
                          f"AND ({where})")


def _probed(reader: AtlasReader, names: list[str], config: IclConfig) -> set[tuple]:
    """(sequence index, start, end) of the targets already probed with this method, seed."""
    paths = reader.part_paths("ablations")
    if not paths:
        return set()
    import pyarrow.dataset as ds

    data = reader.dataset(paths, schema.ABLATIONS)
    table = data.to_table(columns=["seq_id", "target_start", "target_end"],
                          filter=(ds.field("method") == config.method)
                          & (ds.field("seed") == config.seed))
    seq = _seq_index(names, table["seq_id"].to_pylist()).tolist()
    return {(i, a, b) for i, a, b in zip(seq,
                                                 table["target_start"].to_pylist(),
                                                 table["target_end"].to_pylist())}


def with_controls(targets: list[Target], copies: pa.Table, names: list[str], *,
                  upstream: bool = False) -> list[Target]:
    """Each target with its control region (windows' copy positions from ``copies``);
    ``upstream``: a control that lies before the target (what a causal model can see)."""
    seq = _seq_index(names, copies["seq_id"].to_pylist())
    pos = copies["pos"].to_numpy()
    window = copies["window_start"].to_numpy()
    by_window: dict[tuple[int, int], np.ndarray] = {}
    order = np.lexsort((pos, window, seq))
    seq, pos, window = seq[order], pos[order], window[order]
    keys = np.stack([seq, window], axis=1)
    bounds = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(seq)]])):
        if hi > lo:
            by_window[(int(seq[lo]), int(window[lo]))] = pos[lo:hi]
    out = []
    for t in targets:
        has_copy = np.zeros(t.window_end - t.window_start, dtype=bool)
        found = by_window.get((t.seq, t.window_start))
        if found is not None:
            has_copy[found - t.window_start] = True
        out.append(choose_control(t, has_copy, upstream=upstream))
    return out


# -- work units -------------------------------------------------------------------------

def _plan_units(targets: list[Target], *, mode: str, stride: int, budget: int,
                recompute: bool) -> list[list[Target]]:
    """Targets in atlas order, grouped until a unit's estimated computed tokens reach
    ``budget``."""
    conditions = 3 if recompute else 2
    units, current, cost = [], [], 0
    for t in sorted(targets, key=lambda t: (t.seq, t.window_start, t.start)):
        passes = t.length if mode == "exact" else min(stride, t.length)
        current.append(t)
        cost += conditions * passes * (t.window_end - t.window_start)
        if cost >= budget:
            units.append(current)
            current, cost = [], 0
    if current:
        units.append(current)
    return units


@dataclass
class SequenceData:
    residues: bytes  # original case
    logp: np.ndarray
    window_start: np.ndarray  # per position: the window that scored it
    composition: bytes  # standard letters, for substitution


def read_sequences(reader: AtlasReader, seq_ids: list[str], letters: str
                    ) -> dict[str, SequenceData]:
    """The residues (from ``ref`` and ``soft_masked``), logp and window of every position of
    ``seq_ids``, rebuilt from the atlas itself (the FASTA may have moved)."""
    import pyarrow.dataset as ds

    data = reader.dataset(reader.part_paths("positions"), schema.POSITIONS)
    table = data.to_table(columns=["seq_id", "pos", "ref", "soft_masked", "logp",
                                   "window_start"],
                          filter=ds.field("seq_id").isin(seq_ids))
    table = table.sort_by([("seq_id", "ascending"), ("pos", "ascending")])
    ids = table["seq_id"].to_numpy(zero_copy_only=False)
    out = {}
    for seq_id in seq_ids:
        lo, hi = np.searchsorted(ids, seq_id, side="left"), np.searchsorted(ids, seq_id, "right")
        rows = table.slice(lo, hi - lo)
        pos = rows["pos"].to_numpy()
        length = int(pos[-1]) + 1 if len(pos) else 0
        # a sequence whose ingest is incomplete has gaps: N, no logp, no window there
        codes = np.full(length, ord("N"), dtype=np.uint8)
        codes[pos] = np.frombuffer("".join(rows["ref"].to_pylist()).encode(), dtype=np.uint8)
        soft = np.zeros(length, dtype=bool)
        soft[pos] = rows["soft_masked"].to_numpy(zero_copy_only=False)
        codes[soft & (codes >= ord("A")) & (codes <= ord("Z"))] += 32
        logp = np.full(length, np.nan, dtype=np.float32)
        logp[pos] = rows["logp"].to_numpy(zero_copy_only=False).astype(np.float32)
        window = np.full(length, -1, dtype=np.int64)
        window[pos] = rows["window_start"].fill_null(-1).to_numpy()
        residues = codes.tobytes()
        out[seq_id] = SequenceData(residues, logp, window, standard_letters(residues, letters))
    return out


def _unit_items(reader, units, names, *, config, settings, fingerprint, letters, recompute):
    """``((key, targets, sequences), tasks)`` per unit whose rows are not committed yet."""
    committed = set(reader.manifest.units)
    cache: dict[str, SequenceData] = {}
    for unit in units:
        key = _unit_key(fingerprint, settings, unit, names)
        if key in committed:
            continue
        needed = sorted({names[t.seq] for t in unit} - set(cache))
        if needed:
            cache = {s: v for s, v in cache.items() if s in {names[t.seq] for t in unit}}
            cache.update(read_sequences(reader, needed, letters))
        sequences = {names[t.seq]: cache[names[t.seq]] for t in unit}
        tasks = [task for t in unit for task in _target_tasks(
            t, sequences[names[t.seq]], names[t.seq], config, recompute)]
        yield (key, unit, sequences), tasks


def _unit_key(fingerprint: str, settings: dict, unit: list[Target], names: list[str]) -> str:
    content = [fingerprint, settings] + [
        (names[t.seq], t.window_start, t.window_end, t.start, t.end, t.partner_start,
         t.partner_end, t.direct, t.control_start, t.control_end) for t in unit]
    return "ablations-" + hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _target_tasks(t: Target, seq: SequenceData, seq_id: str, config: IclConfig,
                  recompute: bool) -> list[RescoreTask]:
    """The target's rescoring tasks: partner corrupted, control corrupted (when it has one)
    and intact (when the atlas's own value is in another likelihood mode)."""
    ws, we = t.window_start, t.window_end
    window = seq.residues[ws:we]
    owned = np.flatnonzero(seq.window_start[ws:we] == ws)
    own = (int(owned[0]), int(owned[-1]) + 1) if len(owned) else (t.start - ws, t.end - ws)
    bases = np.arange(t.start - ws, t.end - ws, dtype=np.int64)
    regions = [("partner", t.partner_start, t.partner_end)]
    if t.control_start is not None:
        regions.append(("control", t.control_start, t.control_end))
    tasks = []
    for role, lo, hi in regions:
        rng = region_rng(config.seed, config.method, seq_id, lo, hi, role)
        residues, masked = corrupt(window, lo - ws, hi - ws, method=config.method, rng=rng,
                                   composition=seq.composition)
        tasks.append(RescoreTask(residues, *own, bases, masked))
    if recompute:
        tasks.append(RescoreTask(window, *own, bases))
    return tasks


# -- running and committing ---------------------------------------------------------------

def _run(config: IclConfig, spec, mode: str, writer: AtlasWriter, source, report: IclReport,
         settings: dict, *, total: int, names: list[str]) -> None:
    scoring = {"likelihood": mode, "embeddings": False, "layer": [spec.num_layers],
               "batch_tokens": config.batch_tokens, "strands": "forward", "copy_k": 0,
               "nucleic": spec.kind != "protein",
               **recorded_engine(writer.manifest.scoring, mode)}
    progress = Meter(label="probing", unit="positions", rate_unit="pos", total=total,
                     progress=config.progress)

    def commit(item, result) -> None:
        (key, unit, sequences), _ = item
        values, stats = result
        table = _rows(unit, sequences, values, names, config,
                      recompute=report.intact_recomputed)
        writer.commit(key, {"ablations": table},
                      unit={**settings, "targets": len(unit), "positions": table.num_rows,
                            **stats})
        report.units += 1
        report.targets_probed += len(unit)
        report.positions_probed += table.num_rows
        report.real_tokens += stats["real_tokens"]
        report.computed_tokens += stats["computed_tokens"]
        progress.advance(table.num_rows)

    def failed(item, error) -> None:
        (key, unit, _), _ = item
        report.failed.append({"unit": key, "error": describe_error(error),
                              "seq_ids": sorted({names[t.seq] for t in unit})})

    executor = make_executor(spec, scoring, workers=config.workers,
                             gpus_per_worker=config.gpus_per_worker,
                             cpus_per_worker=config.cpus_per_worker, address=config.address)
    report.seconds = run_units_timed(executor, source, method="rescore", commit=commit,
                                     max_retries=config.max_retries, failed=failed,
                                     progress=progress)


def _rows(unit: list[Target], sequences: dict, values: list[np.ndarray], names: list[str],
          config: IclConfig, *, recompute: bool) -> pa.Table:
    """The ``ablations`` rows of a unit from its tasks' values (in :func:`_target_tasks`
    order)."""
    columns: dict[str, list] = {f.name: [] for f in schema.ABLATIONS}
    at = 0
    for t in unit:
        n = t.length
        partner = values[at]
        at += 1
        control = None
        if t.control_start is not None:
            control = values[at]
            at += 1
        if recompute:
            intact = values[at]
            at += 1
        else:
            intact = sequences[names[t.seq]].logp[t.start:t.end]
        if control is None:
            control = np.full(n, np.nan, dtype=np.float32)
        icl = intact - partner
        control_gain = intact - control
        fixed = {"seq_id": names[t.seq], "target_start": t.start, "target_end": t.end,
                 "partner_start": t.partner_start, "partner_end": t.partner_end,
                 "control_start": t.control_start, "control_end": t.control_end,
                 "control_rule": t.control_rule, "copy_strand": "+" if t.direct else "-",
                 "window_start": t.window_start, "window_end": t.window_end,
                 "method": config.method, "seed": config.seed}
        for name, value in fixed.items():
            columns[name].append(pa.array([value] * n, schema.ABLATIONS.field(name).type))
        columns["pos"].append(pa.array(np.arange(t.start, t.end, dtype=np.int64)))
        for name, value in (("logp_intact", intact), ("logp_partner", partner),
                            ("logp_control", control), ("icl_gain", icl),
                            ("control_gain", control_gain),
                            ("net_gain", icl - control_gain)):
            columns[name].append(pa.array(np.asarray(value, dtype=np.float32),
                                          from_pandas=True))
    return pa.Table.from_arrays([pa.concat_arrays(columns[f.name]).cast(f.type)
                                 for f in schema.ABLATIONS], schema=schema.ABLATIONS)
