"""``ingest``: FASTA files in, a resumable Parquet atlas out.

The driver validates every input before writing anything, plans content-keyed units,
skips those already committed, scores the rest on workers and commits each unit's parts
as it arrives. Units that still fail after the retries are reported by sequence id once
everything else is committed.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from seqatlas._version import __version__
from seqatlas.schema import DISTRIBUTION_CHOICES
from seqatlas.manifest import (DISTRIBUTIONS, KEY_SCHEME, FastRecord, Manifest, ScoringRecord,
                               fast_method_text)
from seqatlas.store import AtlasReader, AtlasWriter, atlas_exists
from seqatlas.store.compaction import COMPACTED_TABLES, compact_table, default_memory_bytes
from seqatlas.errors import (AtlasDamagedError, AtlasMismatchError, ConfigError, IngestError,
                             InputError, describe_error)
from seqatlas.progress import Meter, check_progress
from seqatlas.checkpoints.recorded import recorded_settings
from seqatlas.copy_detector import default_copy_k
from seqatlas.fasta import KINDS, detect_kind
from seqatlas.scoring.plan import InputPlan, UnitPlan, iter_unit_jobs, plan_units, scan_input
from seqatlas.scoring.pooling import PoolSpec, check_bin, default_bin, pool_missing, split_bins
from seqatlas.scoring.scorer import LIKELIHOOD_MODES, PRECISIONS, STRANDS, objective_refusal
from seqatlas.scoring.windows import Window, default_overlap
from seqatlas.scoring.workers import WRITE_PARTS
from seqatlas.util import Spool, is_stream, spooled_inputs, utc_now

if TYPE_CHECKING:
    from seqatlas.checkpoints import ModelSpec
    from seqatlas.checkpoints.tokenizers import TokenizerFamily


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_count(config, name: str, *, least: int, optional: bool, meaning: str = "") -> None:
    """``config.<name>`` must be an integer >= ``least`` (or None, the default, where
    ``optional``); bools, floats and strings are refused, naming the option."""
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        default = "; leave it unset for the default" if optional else ""
        raise ConfigError(f"{_flag(name)} must be an integer of at least {least}"
                          f"{meaning}{default}, not {value!r}")


def _validate_numbers(config) -> None:
    """Every numeric option of an :class:`IngestConfig` (None: the default, where the
    option has one); a value that cannot mean anything is refused, naming the option."""
    for name in ("window", "batch_tokens", "unit_tokens", "cpus_per_worker", "fast_stride"):
        _check_count(config, name, least=1, optional=True)
    _check_count(config, "overlap", least=0, optional=True)
    _check_count(config, "workers", least=0, optional=True, meaning=" (0: score in this "
                 "process, without Ray)")
    _check_count(config, "skip_n_runs", least=0, optional=False, meaning=" (0: score every N)")
    _check_count(config, "max_retries", least=0, optional=False)
    gpus = config.gpus_per_worker
    if gpus is not None:
        if isinstance(gpus, bool) or not isinstance(gpus, numbers.Real) \
                or not 0 <= gpus < math.inf:  # refuses nan and inf too
            raise ConfigError(f"--gpus-per-worker must be a finite number of GPUs, 0 or more "
                              f"(a fraction below 1 shares a GPU), not {gpus!r}")
        if gpus > 1 and not float(gpus).is_integer():
            raise ConfigError(f"--gpus-per-worker {gpus:g}: an actor gets a fraction of one "
                              "GPU (below 1) or whole GPUs, not a fraction of several")


@dataclass(frozen=True)
class IngestConfig:
    """Options of an ingest; those that change the values are recorded in the manifest."""

    model: str = "antiberty"
    kind: str | None = None  # protein | dna | rna; detected from the first input when None
    likelihood: str | None = None  # exact | fast | unmasked | causal | none; None: exact
    # for a masked LM, causal for a causal one
    embeddings: bool = True
    layer: int | list[int] | None = None  # hidden layer(s) for embeddings; None = last.
    # Several: the first goes in the tokens column "embedding", each further layer L in
    # "embedding_layer_{L}"; negative layers count back from the last (-1 = last)
    window: int | None = None  # residues per window; None = the model's context
    overlap: int | None = None  # residues shared by neighbouring windows; None = window // 4
    batch_tokens: int | None = None  # padded tokens per forward pass; None = per device
    unit_tokens: int | None = None  # tokens computed per work unit (part of the content key);
    # None: 65536 for exact/fast, 262144 for unmasked/none
    strands: str = "forward"  # forward | both (DNA/RNA: also score the reverse complement)
    skip_n_runs: int = 50  # DNA/RNA runs of at least this many N are not scored (0: score all)
    copy_k: int | None = None  # k-mer of the in-context copy detector; None: 12 for DNA/RNA,
    # 6 for proteins; 0: off (copy_offset, copy_strand null)
    workers: int | None = None  # scoring actors; 0 = score in this process without Ray
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: int | None = None
    address: str | None = None  # Ray cluster address; None = start a local Ray quietly
    max_retries: int = 2
    stall_timeout: float | None = 1800.0  # seconds with no unit finished before ingest
    # stops with an error saying what is stuck (committed work is kept); None or 0: wait on
    tokenizer: str | None = None  # override the detected tokenizer family
    adapter: str | None = None  # the model adapter (seqatlas models); None: detected
    trust_remote_code: bool = False  # run code a checkpoint ships (transformers auto_map)
    progress: bool | str = True  # auto | bar | log | none (True: auto, False: none)
    distributions: str | None = None  # float32 | float16 | none: each position's predicted
    # distribution over the kind's standard letters (positions.letter_logp); None: the
    # atlas's own setting when extending one, else float32
    pool: bool | None = None  # pooled embeddings (seqatlas.scoring.pooling) from the same
    # passes; None: when embeddings are stored and the atlas pools (a new atlas does)
    pool_bin: int | None = None  # bases per pooled bin, 0: one vector per sequence; None:
    # the atlas's own, else 1000 for DNA/RNA and 0 for proteins
    fast_stride: int | None = None  # --likelihood fast: passes per window, each masking
    # every stride-th mask unit; None: the atlas's own, else the tokenizer's default
    precision: str = "float32"  # float32 | bfloat16: the forward passes' arithmetic;
    # bfloat16 (opt-in, on a GPU or a CPU with bf16 units) is recorded in the manifest and
    # stays within BF16_TOLERANCE of float32 (seqatlas.scoring.scorer)
    compact: bool = False  # at the end, compact the positions and tokens parts (see
    # seqatlas.store.compaction); the rows and every read stay the same
    write_parts: str = "workers"  # workers: each worker writes its units' parts into the
    # atlas (it must see the atlas's storage); driver: results travel to the driver, which
    # writes every part (the same bytes either way)

    def validate(self) -> None:
        if self.likelihood is not None and self.likelihood not in LIKELIHOOD_MODES:
            raise ConfigError(f"--likelihood must be one of {', '.join(LIKELIHOOD_MODES)}, "
                              f"not {self.likelihood!r}")
        if not isinstance(self.embeddings, bool):
            raise ConfigError(f"embeddings must be True or False, not {self.embeddings!r} (the "
                              "CLI's --embeddings none is embeddings=False)")
        if self.likelihood == "none" and not self.embeddings:
            raise ConfigError("--likelihood none with --embeddings none computes nothing; "
                              "keep at least one of them")
        if self.strands not in STRANDS:
            raise ConfigError(f"--strands must be one of {', '.join(STRANDS)}, not "
                              f"{self.strands!r}")
        _validate_numbers(self)
        check_progress(self.progress)
        if self.fast_stride is not None and self.likelihood not in (None, "fast"):
            raise ConfigError(f"--fast-stride sets --likelihood fast's passes; it means nothing "
                              f"with --likelihood {self.likelihood}: drop it or use fast")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not "
                              f"{self.precision!r}")
        if self.distributions is not None and self.distributions not in DISTRIBUTION_CHOICES:
            raise ConfigError(f"--distributions must be one of "
                              f"{', '.join(DISTRIBUTION_CHOICES)}, not {self.distributions!r}")
        if self.likelihood == "none" and self.distributions not in (None, "none"):
            raise ConfigError("--distributions stores the likelihood's distributions, and "
                              "--likelihood none computes none: drop --distributions or choose "
                              "a likelihood")
        if self.write_parts not in WRITE_PARTS:
            raise ConfigError(f"--write-parts must be one of {', '.join(WRITE_PARTS)}, not "
                              f"{self.write_parts!r}")
        if self.copy_k is not None and (isinstance(self.copy_k, bool) or
                                        not isinstance(self.copy_k, int) or self.copy_k < 0):
            raise ConfigError(f"--copy-k must be a k-mer length of at least 1, or 0 to turn "
                              f"copy detection off, not {self.copy_k!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.stall_timeout is not None and (
                isinstance(self.stall_timeout, bool) or not isinstance(self.stall_timeout,
                                                                       (int, float))
                or not 0 <= self.stall_timeout < float("inf")):  # refuses nan, inf, < 0
            raise ConfigError(f"--stall-timeout must be a finite number of seconds > 0, or 0 "
                              f"to turn the watchdog off, not {self.stall_timeout!r}")
        if self.pool is not None and not isinstance(self.pool, bool):
            raise ConfigError(f"pool must be True, False or None, not {self.pool!r}")
        if self.pool_bin is not None:
            check_bin(self.pool_bin)
            if self.pool is False:
                raise ConfigError("--pool-bin sets the bins of pooled embeddings, and --no-pool "
                                  "turns them off: give one of them")
        if (self.pool or self.pool_bin is not None) and not self.embeddings:
            raise ConfigError("pooled embeddings are pooled from the token embeddings, and "
                              "--embeddings none stores none: drop --pool/--pool-bin or "
                              "store embeddings")
        layers = self.layer if isinstance(self.layer, (list, tuple)) else [self.layer]
        if self.layer is not None and (not layers or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in layers)):
            raise ConfigError(f"layer must be an int or a non-empty list of ints, not "
                              f"{self.layer!r}")


# what a worker reports of how it ran (not of a unit): the forward passes' precision, its
# batch size in padded tokens (measured on a CPU), its device and compute threads
ENGINE_STATS = ("precision", "batch_tokens", "device", "threads")


@dataclass
class IngestReport:
    """What an ingest did; ``failed`` lists the sequence ids of units that kept failing."""

    atlas: str
    units_total: int
    units_skipped: int
    units_scored: int = 0
    positions_scored: int = 0
    positions_unscored: int = 0  # in long N runs: rows with null scores
    seconds: float = 0.0
    real_tokens: int = 0
    computed_tokens: int = 0
    failed: list[dict] = field(default_factory=list)
    units_repaired: int = 0  # committed units whose parts were damaged, scored again
    # how the workers ran: ENGINE_STATS -> the values seen (batch tokens, threads, ...)
    engine: dict[str, set] = field(default_factory=dict)
    # positions left without a score, by reason (seqatlas.scoring.scorer.unscored_reasons)
    unscored_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def positions_per_second(self) -> float:
        return self.positions_scored / self.seconds if self.seconds else 0.0

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / computed tokens (1.0 = no padding)."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "engine": self.engine_record(),
                "positions_per_second": self.positions_per_second,
                "padding_efficiency": self.padding_efficiency}

    def engine_record(self) -> dict:
        """Each engine setting the workers used: one value, or the sorted list of several."""
        return {key: (next(iter(v)) if len(v) == 1 else sorted(v, key=str))
                for key, v in sorted(self.engine.items())}


def ingest(fasta: str | Path | list, *, atlas: str | Path, **options) -> IngestReport:
    """Score FASTA file(s) into the atlas directory ``atlas``; options as :class:`IngestConfig`.

    Re-running the same call skips committed work; a crashed run resumes where it stopped.
    """
    config = _config(_with_recorded_settings(atlas, options))
    config.validate()
    with spooled_inputs(_input_paths(fasta), what="FASTA") as spool:
        return _ingest_inputs(config, spool, atlas=atlas)


def _ingest_inputs(config: IngestConfig, spool: Spool, *, atlas: str | Path) -> IngestReport:
    """:func:`ingest` of inputs that are regular files (streams spooled)."""
    paths = spool.paths
    kind = config.kind or _detect_kind(paths)
    _check_kind_options(config, kind)
    inputs = _scan_inputs(config, paths, kind)  # validates before any write
    for plan in inputs:
        plan.source = spool.names.get(str(plan.path))
    if config.kind is not None:
        _warn_if_kind_contradicts(inputs, config.kind)
    existing = _existing_atlas(atlas)
    _refuse_known_ids(existing, inputs)  # before the model is resolved (it hashes weights)
    setup = _resolve_setup(config, kind=kind)
    _check_model_fit(setup, paths)
    _refuse_pre_letter_map_atlas(existing, setup)
    config = replace(config, likelihood=setup.likelihood)
    if config.fast_stride is not None and config.likelihood != "fast":
        raise ConfigError(f"--fast-stride sets --likelihood fast's passes; it means nothing "
                          f"with --likelihood {config.likelihood}: drop it or use fast")
    scoring = _scoring_record(config, setup.tokenizer, window=setup.window,
                              overlap=setup.overlap, layers=setup.layers,
                              unit_tokens=setup.unit_tokens, kind=kind, copy_k=setup.copy_k)

    with AtlasWriter(atlas, kind=kind, model=setup.spec.describe(), scoring=scoring,
                     seqatlas_version=__version__, kind_detected=config.kind is None) as writer:
        _refuse_damaged_sequences(writer)
        pooling = _pool_spec(config, setup, writer)  # refusals before anything is written
        _register_inputs(writer, inputs, kind)
        fingerprint, key_record = _keying(writer.manifest)
        per_input = _plan_inputs(config, setup, inputs, fingerprint=fingerprint)
        repaired = _drop_damaged_units(writer, per_input)
        committed = writer.committed_units
        todo = [u for units in per_input for u in units if u.key not in committed]
        report = IngestReport(atlas=str(atlas),
                              units_total=sum(len(u) for u in per_input),
                              units_skipped=sum(len(u) for u in per_input) - len(todo),
                              units_repaired=repaired)
        if todo:
            _run_units(_Run(config=config, setup=setup, inputs=inputs, per_input=per_input,
                            committed=committed, todo=todo, writer=writer, report=report,
                            key_record=key_record, pooling=pooling))
        if report.units_scored:
            _note_likelihood(writer)
            _warn_unscored_letters(report)
        if pooling is not None and not report.failed:
            _pool_split_bins(writer, pooling, inputs, per_input)
        if config.compact and not report.failed:
            _compact(writer)
    _raise_if_failed(report, max_retries=config.max_retries)
    return report


def _compact(writer: AtlasWriter) -> None:
    """Compact the scored tables at the end of a run (``--compact``)."""
    for table in COMPACTED_TABLES:
        compact_table(writer, table, memory_bytes=default_memory_bytes())
    writer.fold()


@dataclass(frozen=True)
class _Setup:
    """The model and the scoring geometry an ingest resolved from its config."""

    kind: str
    spec: ModelSpec
    tokenizer: TokenizerFamily
    window: int
    overlap: int
    layers: list[int]
    copy_k: int
    unit_tokens: int
    likelihood: str  # the config's, or the model's default when it gave none

    def scoring_args(self, config: IngestConfig) -> dict:
        """The keyword arguments of each worker's scorer."""
        return {"likelihood": config.likelihood, "embeddings": config.embeddings,
                "layer": self.layers, "batch_tokens": config.batch_tokens,
                "strands": config.strands, "copy_k": self.copy_k,
                "nucleic": self.kind != "protein",
                "distributions": letter_dtype(config), "precision": config.precision,
                "fast_stride": fast_stride(config, self.tokenizer)}


@dataclass
class _Run:
    """What the scoring loop of one ingest works on."""

    config: IngestConfig
    setup: _Setup
    inputs: list[InputPlan]
    per_input: list[list[UnitPlan]]
    committed: set[str]
    todo: list[UnitPlan]
    writer: AtlasWriter
    report: IngestReport
    key_record: dict  # what each scored unit's record says of its key
    pooling: PoolSpec | None = None  # what workers pool (None: no pooled embeddings)


def _pool_spec(config: IngestConfig, setup: _Setup, writer: AtlasWriter) -> PoolSpec | None:
    """What this ingest pools: the atlas's recorded pooling, or for a new atlas the
    config's (recorded now); None without embeddings or pooling."""
    manifest = writer.manifest
    if not config.embeddings or manifest.scoring is None:
        return None
    columns = manifest.scoring.embedding_columns()
    if manifest.pooling:
        spec = PoolSpec.from_record(manifest.pooling, columns)
        if config.pool is False:
            raise ConfigError(f"{writer.path} pools its embeddings ({spec.level}, bin "
                              f"{spec.bin}); the sequences added are pooled the same way: "
                              "drop --no-pool")
        if config.pool_bin is not None and config.pool_bin != spec.bin:
            raise ConfigError(f"--pool-bin {config.pool_bin}: {writer.path} pools into "
                              f"{spec.bin or 'whole-sequence'} bins; drop --pool-bin (or "
                              "`seqatlas pool --replace --bin N` re-pools the whole atlas)")
        return spec
    fresh = not manifest.table_parts("tokens") and not manifest.table_parts("positions")
    if not fresh:
        if config.pool or config.pool_bin is not None:
            raise ConfigError(f"{writer.path} holds sequences ingested without pooled "
                              f"embeddings; run `seqatlas pool --atlas {writer.path}` first "
                              "(it pools the stored ones, and later ingests pool theirs)")
        return None
    if config.pool is False:
        return None
    size = default_bin(setup.kind) if config.pool_bin is None else config.pool_bin
    bos = size == 0 and bool(setup.tokenizer.specials.prefix) and not setup.spec.causal
    layers = tuple(setup.layers)
    spec = PoolSpec(size, ("mean", "bos") if bos else ("mean",), layers,
                    tuple(columns[x] for x in layers))
    writer.set_pooling(spec.record())
    return spec


def _pool_split_bins(writer: AtlasWriter, spec: PoolSpec, inputs: list[InputPlan],
                     per_input: list[list[UnitPlan]]) -> None:
    """Pool, from the stored tokens, the bins that no one unit owned whole (workers pool
    every other bin); a re-run finds them pooled and does nothing."""
    owned, lengths = [], {}
    for plan, units in zip(inputs, per_input):
        for seq in plan.sequences:
            lengths[seq.seq_id] = seq.length
        for unit in units:
            ranges: dict[str, list[tuple[int, int]]] = {}
            for s_index, w in unit.windows:
                ranges.setdefault(plan.sequences[s_index].seq_id, []).append(
                    (w.own_start, w.own_end))
            owned.append(ranges)
    wanted = split_bins(owned, lengths, spec.bin)
    if wanted:
        pool_missing(writer, spec, wanted)


def fast_stride(config: IngestConfig, tokenizer) -> int | None:
    """Fast mode's passes per window (None in other modes): as given, else the tokenizer's."""
    if config.likelihood != "fast":
        return None
    return config.fast_stride or tokenizer.fast_stride()


def letter_dtype(config: IngestConfig) -> str | None:
    """The dtype the distributions are stored in (None: not stored)."""
    if config.likelihood == "none" or config.distributions == "none":
        return None
    return config.distributions or "float32"


def _with_recorded_settings(atlas: str | Path, options: dict) -> dict:
    """``options`` completed, when ``atlas`` exists, by the settings it was built with: adding
    a file needs none of them again (a setting given that differs is still refused). The
    kind is left to detection, so a file of another kind is refused, not misread."""
    existing = _existing_atlas(atlas)
    if existing is None:
        return options
    recorded = recorded_settings(existing.manifest)
    recorded.pop("kind")
    if options.get("model") not in (None, recorded["model"]):
        # another model: its own geometry, so the refusal names the model, not a window
        for name in ("window", "overlap", "layer", "tokenizer", "adapter"):
            recorded.pop(name, None)
    given = {k: v for k, v in options.items() if v is not None or k not in recorded}
    merged = {**recorded, **given}
    if merged.get("likelihood") != "fast" and given.get("fast_stride") is None:
        merged.pop("fast_stride", None)  # another mode: the mismatch is the likelihood's
    return merged


def _config(options: dict) -> IngestConfig:
    known = IngestConfig.__dataclass_fields__
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown ingest option(s) {', '.join(unknown)}; the options are "
                          f"{', '.join(known)}")
    return IngestConfig(**options)


def _input_paths(fasta: str | Path | list) -> list[Path]:
    paths = [Path(p) for p in ([fasta] if isinstance(fasta, (str, Path)) else fasta)]
    if not paths:
        raise ConfigError("no FASTA file given")
    for path in paths:
        if not (path.is_file() or is_stream(path)):
            raise InputError(f"{path}: no such file" if not path.is_dir() else
                             f"{path} is a directory; give the FASTA files in it")
    return paths


def _check_kind_options(config: IngestConfig, kind: str) -> None:
    if config.strands == "both" and kind == "protein":
        raise ConfigError("--strands both needs DNA or RNA input (proteins have one strand)")


def _warn_if_kind_contradicts(inputs: list[InputPlan], kind: str) -> None:
    """A ``--kind`` that the content contradicts is used, with a warning per file (what
    the content looks like was seen by the validating scan: no extra read)."""
    for plan in inputs:
        guess = plan.guess
        if guess is not None and guess.kind != kind:
            warnings.warn(f"{plan.path}: --kind {kind} was given, but its content looks like "
                          f"{guess.kind} ({guess.evidence()}); it is scored as {kind}. If "
                          f"that is not what you meant, pass --kind {guess.kind} (or omit "
                          "--kind to detect it)", UserWarning, stacklevel=3)


def _existing_atlas(atlas: str | Path) -> AtlasReader | None:
    """The atlas being extended, read without its lock (None for a new one)."""
    return AtlasReader(atlas) if atlas_exists(atlas) else None


def _refuse_known_ids(existing: AtlasReader | None, inputs: list[InputPlan]) -> None:
    """A new input repeating a sequence id of the atlas is refused before any work starts
    (inputs already registered, same bytes, reuse their ids)."""
    if existing is None or not existing.manifest.inputs or existing.check_parts(["sequences"]):
        return  # nothing registered yet, or a damaged table: the writer says what to do
    rows = existing.sequences(["seq_id", "source"]).to_pydict()
    source = dict(zip(rows["seq_id"], rows["source"]))
    known = {i.sha256 for i in existing.manifest.inputs}
    for plan in inputs:
        if plan.sha256 in known:
            continue
        repeated = [s.seq_id for s in plan.sequences if s.seq_id in source]
        if repeated:
            more = f" (and {len(repeated) - 1} more)" if len(repeated) > 1 else ""
            raise InputError(f"{plan.path}: record {repeated[0]!r}{more} is already in the "
                             f"atlas {existing.path} (from {source[repeated[0]]}); ids must be "
                             "unique within an atlas: rename the records or ingest into "
                             "another --atlas. Nothing was written.")


def _refuse_pre_letter_map_atlas(existing: AtlasReader | None, setup: _Setup) -> None:
    """An atlas whose letters were read without this model's letter map (an RNA scored with
    a DNA model before U was read as T: every U stored as -inf) is not extended."""
    if existing is None or existing.manifest.model is None:
        return
    record = existing.manifest.model
    letter_map = setup.tokenizer.letter_map
    if record.weights_sha256 == setup.spec.weights_sha256 and letter_map and \
            record.extra.get("letter_map") != letter_map and existing.manifest.kind == setup.kind:
        mine, theirs = "/".join(letter_map), "/".join(letter_map.values())
        raise AtlasMismatchError(
            f"{existing.path} was scored before seqatlas read {_a(setup.kind)}'s "
            f"{mine} as this model's {theirs} (the model has no {mine} token): its {mine} "
            "positions hold -inf, and new rows would not match them. Ingest into a new "
            "--atlas directory (the old atlas can still be queried).")


def _a(kind: str) -> str:
    return {"rna": "an RNA", "dna": "a DNA"}.get(kind, f"a {kind}")


def _resolve_setup(config: IngestConfig, *, kind: str) -> _Setup:
    from seqatlas.checkpoints import resolve_model

    _check_kind_options(config, kind)
    spec = resolve_model(config.model, kind=kind, tokenizer=config.tokenizer,
                         adapter=config.adapter, trust_remote_code=config.trust_remote_code)
    likelihood = model_likelihood(config.likelihood, spec)
    config = replace(config, likelihood=likelihood)
    tokenizer = spec.tokenizer()
    window, overlap = _window_geometry(config, tokenizer, context_tokens=spec.context_tokens)
    layers = resolve_layers(config.layer, spec.num_layers)
    copy_k = default_copy_k(kind) if config.copy_k is None else config.copy_k
    if copy_k > window:
        raise ConfigError(f"--copy-k {copy_k} is longer than the window ({window}): no k-mer "
                          "fits; lower --copy-k, or use 0 to turn copy detection off")
    unit_tokens = config.unit_tokens if config.unit_tokens is not None else \
        (65536 if config.likelihood in ("exact", "fast") else 262144)
    return _Setup(kind=kind, spec=spec, tokenizer=tokenizer, window=window, overlap=overlap,
                  layers=layers, copy_k=copy_k, unit_tokens=unit_tokens, likelihood=likelihood)


def model_likelihood(likelihood: str | None, spec: ModelSpec) -> str:
    """The likelihood mode asked for, or the model's default (exact for a masked LM, causal
    for a causal one); a mode the model cannot compute is refused with the reason."""
    if likelihood is None:
        return "causal" if spec.causal else "exact"
    if likelihood != "none" and (likelihood == "causal") != spec.causal:
        raise ConfigError(objective_refusal(spec, likelihood))
    return likelihood


def window_context(likelihood: str, strands: str) -> str:
    """How windows share their overlap (seqatlas.scoring.windows): centred for masked modes,
    left context for a causal model on one strand, both sides with both strands."""
    if likelihood != "causal":
        return "centred"
    return "both" if strands == "both" else "left"


def _check_model_fit(setup: _Setup, paths: list[Path]) -> None:
    """The model must be for this kind and have a token for its core letters (before any
    write); the inputs are read again only to count the letters a model lacks."""
    from seqatlas.checkpoints.fit import check_model_fit, count_letters
    from seqatlas.fasta import read_fasta

    check_model_fit(setup.spec, lambda letters: count_letters(
        (r.sequence for p in paths for r in read_fasta(p, kind=setup.kind)), letters),
        tokenizer=setup.tokenizer)


def _note_likelihood(writer: AtlasWriter) -> None:
    """After new rows are committed: record (and warn) when the model's mean logp over the
    committed rows is below the uniform baseline; drop that warning when it no longer is."""
    from seqatlas.checkpoints.fit import LOW_LIKELIHOOD, likelihood_warning

    warning = likelihood_warning(AtlasReader(writer.path))
    writer.set_warning(LOW_LIKELIHOOD, warning)
    if warning is not None:
        warnings.warn(warning["message"], UserWarning, stacklevel=4)


def _window_geometry(config: IngestConfig, tokenizer: TokenizerFamily, *,
                     context_tokens: int) -> tuple[int, int]:
    """``(window, overlap)`` in residues, checked against the model's context."""
    default_window = tokenizer.residues_per_window(context_tokens)
    # variable-length tokens: a longer window may fit; the scorer checks each window
    max_window = default_window if tokenizer.family in ("single", "overlapping_kmer") else \
        (context_tokens - tokenizer.n_special) * max(tokenizer.candidates)
    window = default_window if config.window is None else config.window
    if not 1 <= window <= max_window:
        raise ConfigError(f"--window {window} does not fit the model's context "
                          f"({max_window} residues)")
    least = tokenizer.min_overlap()
    overlap = max(default_overlap(window), least) if config.overlap is None else config.overlap
    if not least <= overlap < window:
        raise ConfigError(f"--overlap must be in [{least}, {window}) for --window {window} "
                          f"with a {tokenizer.family} tokenizer")
    if config.likelihood == "causal" and config.strands == "both" and 2 * overlap >= window:
        raise ConfigError(f"--overlap {overlap} must be below half of --window {window} for a "
                          "causal model on both strands (each position keeps --overlap of "
                          "context on each side)")
    return window, overlap


def _scan_inputs(config: IngestConfig, paths: list[Path], kind: str) -> list[InputPlan]:
    seen: set[str] = set()
    skip = config.skip_n_runs if kind != "protein" else 0
    return [scan_input(path, kind, seen, skip_n_runs=skip) for path in paths]


def _plan_inputs(config: IngestConfig, setup: _Setup, inputs: list[InputPlan], *,
                 fingerprint: str) -> list[list[UnitPlan]]:
    """Each input's content-keyed units (units never span inputs)."""
    cost = _cost_model(config, setup.tokenizer)
    context = window_context(setup.likelihood, config.strands)
    return [plan_units([plan], fingerprint=fingerprint, window=setup.window,
                       overlap=setup.overlap, cost=cost, unit_tokens=setup.unit_tokens,
                       context=context)
            for plan in inputs]


def _raise_if_failed(report: IngestReport, *, max_retries: int) -> None:
    if not report.failed:
        return
    ids = sorted({s for f in report.failed for s in f["seq_ids"]})
    raise IngestError(
        f"{len(report.failed)} work unit(s) failed after {max_retries} retries "
        f"(sequences: {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}); "
        f"last error: {report.failed[-1]['error']}. Everything else is committed: "
        "re-run the same command to retry only the failed units.")


def _detect_kind(paths: list[Path]) -> str:
    kinds = {detect_kind(p) for p in paths}
    if len(kinds) > 1:
        raise ConfigError(f"the inputs look like different kinds ({', '.join(sorted(kinds))}); "
                          "ingest them into separate atlases or pass --kind")
    return kinds.pop()


def resolve_layers(layer: int | list[int] | None, num_layers: int) -> list[int]:
    """Requested hidden layer(s) as non-negative indices (0 = input embeddings), in order."""
    requested = [num_layers] if layer is None else \
        list(layer) if isinstance(layer, (list, tuple)) else [layer]
    layers = []
    for value in requested:
        resolved = value + num_layers + 1 if value < 0 else value
        if not 0 <= resolved <= num_layers:
            raise ConfigError(f"--layer {value}: must be in [0, {num_layers}] (or negative "
                              "from the end, -1 = the last)")
        if resolved in layers:
            raise ConfigError(f"--layer {value} repeats layer {resolved}; give each layer once")
        layers.append(resolved)
    return layers


def _keying(manifest: Manifest) -> tuple[str, dict]:
    """What every unit's content key starts from (the weights and the scoring settings, by
    stable identifiers), and what its unit record says of it; atlases keyed before stable
    identifiers existed keep their keys."""
    if manifest.legacy_keys():
        return manifest.model.weights_sha256 + manifest.scoring.legacy_key(), {}
    return model_identity(manifest) + manifest.scoring.key(), {"key_scheme": KEY_SCHEME}


def model_identity(manifest: Manifest) -> str:
    """The model's part of a content key: its weights, and the code that travels with them
    (a model whose code changed is another model)."""
    code = manifest.model.extra.get("code_sha256")
    return manifest.model.weights_sha256 + (f"+code:{code}" if code else "")


def _scoring_record(config: IngestConfig, tokenizer, *, window: int, overlap: int,
                    layers: list[int], unit_tokens: int, kind: str,
                    copy_k: int) -> ScoringRecord:
    fast = None
    if config.likelihood == "fast":
        stride = fast_stride(config, tokenizer)
        unit = {"single": "the token of one residue",
                "overlapping_kmer": f"the {getattr(tokenizer, 'k', 1)} tokens containing one base",
                }.get(tokenizer.family, "one token (all its bases)")
        fast = FastRecord(stride=stride, mask_rate=round(tokenizer.bases_per_token / stride, 4),
                          method="round-robin", method_text=fast_method_text(unit, stride))
    return ScoringRecord(
        likelihood=config.likelihood, embeddings=config.embeddings,
        embedding_dtype="float16" if config.embeddings else None,
        layer=layers[0] if config.embeddings else None,  # the "embedding" column's layer
        layers=layers if config.embeddings else None,  # further layers: embedding_layer_{L}
        window=window, overlap=overlap, unit_tokens=unit_tokens, strands=config.strands,
        skip_n_runs=config.skip_n_runs if kind != "protein" else None,
        copy_k=copy_k,  # in-context copy detector (seqatlas.copy_detector); 0 = off
        distribution="standard-letters", distribution_text=DISTRIBUTIONS["standard-letters"],
        fast=fast, letter_dtype=letter_dtype(config),
        distribution_letters=tokenizer.letters if letter_dtype(config) else None,
        precision=None if config.precision == "float32" else config.precision)



def _cost_model(config: IngestConfig, tokenizer):
    """Estimated tokens computed for a window, to size work units."""
    per_base = {"single": 1.0, "overlapping_kmer": 1.0,
                "nonoverlapping_kmer": 1.0 / getattr(tokenizer, "k", 1)}.get(tokenizer.family,
                                                                            0.25)
    strands = 2 if config.strands == "both" else 1
    unmasked_pass = int(config.embeddings or config.likelihood != "none")

    def cost(window: Window) -> int:
        if not window.scored:
            return 0
        tokens = window.length * per_base + tokenizer.n_special
        owned = window.own_end - window.own_start
        passes = {"exact": owned * per_base,
                  "fast": min(fast_stride(config, tokenizer) or 1, owned)}.get(
                      config.likelihood, 0)
        return int(tokens * (passes + unmasked_pass) * strands)

    return cost


def _refuse_damaged_sequences(writer: AtlasWriter) -> None:
    """A damaged sequences part holds the ordinals and offsets every other part depends on:
    only ``repair`` rebuilds it (from the inputs, with the same ordinals)."""
    damage = writer.check_parts(["sequences"])
    if damage:
        raise AtlasDamagedError(
            f"{writer.path}: the sequences table is damaged ({'; '.join(map(str, damage))}); "
            f"run `seqatlas repair --atlas {writer.path}`, which rebuilds it from the inputs")


def _drop_damaged_units(writer: AtlasWriter, per_input: list[list[UnitPlan]]) -> int:
    """Forget this ingest's committed units whose parts are damaged, so they are scored
    again (same content keys, same part names); returns how many."""
    planned = {u.key for units in per_input for u in units}
    damage = [d for d in writer.check_parts(["positions", "tokens"]) if d.unit in planned]
    return len(writer.drop_damaged(damage)) if damage else 0


def _register_inputs(writer: AtlasWriter, inputs: list[InputPlan], kind: str) -> None:
    """Give new inputs' sequences ordinals and offsets, reuse those of known inputs."""
    known = {i.sha256: i for i in writer.manifest.inputs}
    atlas = AtlasReader(writer.path)
    existing = atlas.sequences() if writer.manifest.inputs else None
    by_id = {}
    if existing is not None:
        for row in existing.to_pylist():
            by_id[row["seq_id"]] = row
    next_ordinal = len(by_id)
    next_global = sum(r["length"] for r in by_id.values())
    new = []
    for plan in inputs:  # every input is checked before any is registered
        if plan.sha256 in known:
            for seq in plan.sequences:
                row = by_id[seq.seq_id]
                seq.ordinal, seq.global_start = row["ordinal"], row["global_start"]
                seq.token_offset = row["token_offset"]
            plan.registered = True
            continue
        for seq in plan.sequences:
            if seq.seq_id in by_id:
                raise InputError(f"{plan.path}: record {seq.seq_id!r} is already in the atlas "
                                 f"(from {by_id[seq.seq_id]['source']}); ids must be unique "
                                 "within an atlas: rename the records or ingest into another "
                                 "--atlas. Nothing was written.")
            seq.ordinal, seq.global_start, seq.token_offset = next_ordinal, next_global, next_global
            next_ordinal += 1
            next_global += seq.length
        new.append(plan)
    for plan in new:
        key = "sequences-" + plan.sha256
        writer.commit(key, {"sequences": plan.sequences_table()},
                      unit={"input": str(plan.path)}, inputs=[{**plan.describe(), "kind": kind}])


def _run_units(run: _Run) -> None:
    from seqatlas.scoring.workers import UnitRequest, run_units_timed

    config, report = run.config, run.report
    executor = _executor(config, run.setup, units=len(run.todo))
    staging = None
    if config.write_parts == "workers":  # a directory's absolute path, or a remote location
        area = run.writer.staging_area()
        staging = str(area.absolute()) if isinstance(area, Path) else area
    source = ((unit, UnitRequest(key=unit.key, jobs=jobs, staging=staging, pool=run.pooling))
              for plan, units in zip(run.inputs, run.per_input)
              for unit, jobs in iter_unit_jobs(plan, units, kind=run.setup.kind,
                                               skip=run.committed))
    # positions that will be scored: those in long N runs are neither counted nor timed
    progress = Meter(label="scoring", unit="positions", rate_unit="pos",
                     total=sum(u.positions - u.unscored for u in run.todo),
                     progress=config.progress)
    nodes: dict[str, int] = {}
    unstaged: dict[str, int] = {}  # node: units whose rows came back (no staging area seen)
    started = utc_now()

    def commit(item, result) -> None:
        before = report.positions_scored
        _commit_unit(run, item[0], item[1].jobs, result)
        if staging is not None and result.staged is None:
            if result.node not in unstaged:
                warnings.warn(f"Ray node {result.node} does not see the atlas's staging area "
                              f"{staging}: its units' rows travel to the driver, which writes "
                              "them. Put the atlas on storage every node reaches (a shared file "
                              "system, s3://) to keep them off the driver.", stacklevel=2)
            unstaged[result.node] = unstaged.get(result.node, 0) + 1
        nodes[result.node] = nodes.get(result.node, 0) + 1
        progress.settle(item[0].key, report.positions_scored - before)

    def partial(item, tokens: int) -> None:
        """A unit in flight: its scored positions in proportion to the tokens computed so
        far (the unit's cost estimates them all), never all of them before it commits."""
        unit = item[0]
        scored = unit.positions - unit.unscored
        share = min(scored * tokens // unit.cost, scored - 1) if unit.cost else 0
        progress.partial(unit.key, max(share, 0))

    def failed(item, error) -> None:
        unit, request = item
        report.failed.append({"unit": unit.key, "error": describe_error(error),
                              "seq_ids": sorted({j.seq_id for j in request.jobs})})

    report.seconds = run_units_timed(executor, source, method="score_unit", commit=commit,
                                     max_retries=config.max_retries, failed=failed,
                                     progress=progress, stall_timeout=config.stall_timeout,
                                     total=len(run.todo), partial=partial)
    if report.units_scored:
        run.writer.record_run(_run_record(run, executor, nodes=nodes, started=started,
                                           unstaged=unstaged))


def _run_record(run: _Run, executor, *, nodes: dict[str, int], started: str,
                unstaged: dict[str, int]) -> dict:
    """The manifest's record of this run: what was scored, where, and what crossed the
    driver (payloads out, results in) per scored position; ``units_sent_back``: per node, the
    units whose rows came to the driver although workers were to write them."""
    report = run.report
    sent, received = executor.bytes_sent, executor.bytes_received
    positions = report.positions_scored
    return {
        "command": "ingest", "seqatlas_version": __version__, "started": started,
        "finished": utc_now(), "seconds": round(report.seconds, 3),
        "units": report.units_scored, "units_failed": len(report.failed),
        "positions_scored": positions, "positions_unscored": report.positions_unscored,
        "executor": "in-process" if getattr(executor, "ray", None) is None else "ray",
        "workers": getattr(executor, "workers", 1), "nodes": dict(sorted(nodes.items())),
        "write_parts": run.config.write_parts, "engine": report.engine_record(),
        "unscored_reasons": dict(sorted(report.unscored_reasons.items())),
        "units_sent_back": dict(sorted(unstaged.items())),
        "driver_bytes": {"sent": sent, "received": received,
                         "per_position": round((sent + received) / positions, 3)
                         if positions else None},
    }


def _warn_unscored_letters(report: IngestReport) -> None:
    """Say which residue letters were left unscored because the model has no token for them
    (a stray U in DNA, a B or Z with a model without them): null, never silently."""
    letters = {reason.split(": ", 1)[1]: n for reason, n in report.unscored_reasons.items()
               if reason.startswith("no token: ")}
    if letters:
        listed = ", ".join(f"{letter} x{n:,}" for letter, n in sorted(letters.items()))
        warnings.warn(f"{sum(letters.values()):,} position(s) hold letters the model has no "
                      f"token for ({listed}): their logp, entropy and rank are null; the run "
                      "record's unscored_reasons lists every unscored position by reason",
                      stacklevel=3)


def _executor(config: IngestConfig, setup: _Setup, *, units: int = 0):
    """The Ray actors, or this process with ``workers=0``."""
    from seqatlas.scoring.workers import make_executor

    return make_executor(setup.spec, setup.scoring_args(config), workers=config.workers,
                         gpus_per_worker=config.gpus_per_worker,
                         cpus_per_worker=config.cpus_per_worker, address=config.address,
                         units=units)


def _commit_unit(run: _Run, unit: UnitPlan, jobs, result) -> None:
    """Commit one scored unit: the parts its worker staged, or the rows it sent back."""
    report = run.report
    stats = {k: v for k, v in result.stats.items()
             if k not in ENGINE_STATS and k != "unscored_reasons"}
    for key in ENGINE_STATS:  # how the worker ran (the run record's, not the unit's)
        if key in result.stats:
            report.engine.setdefault(key, set()).add(result.stats[key])
    for reason, n in result.stats.get("unscored_reasons", {}).items():
        report.unscored_reasons[reason] = report.unscored_reasons.get(reason, 0) + n
    record = {**run.key_record, "seq_ids": sorted({j.seq_id for j in jobs}),
              "positions": result.positions, "unscored": unit.unscored, **stats}
    if result.staged is not None:
        run.writer.commit_staged(unit.key, result.staged, unit=record)
    else:
        run.writer.commit(unit.key, result.tables, unit=record)
    report.units_scored += 1
    report.positions_scored += result.positions - unit.unscored
    report.positions_unscored += unit.unscored
    report.real_tokens += stats["real_tokens"]
    report.computed_tokens += stats["computed_tokens"]

