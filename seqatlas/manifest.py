"""The manifest (``atlas.json``) as typed records: one reader (:meth:`Manifest.from_json`),
one writer (:meth:`Manifest.to_json`), and the content keys of scored units.

The file's keys and values are what seqatlas has always written. Prose in it (how the
likelihood is normalised, how fast mode deals mask units into passes, how k-mer marginals
are combined) is for people: the records carry it verbatim for display, and compare and key
on a **stable identifier** instead (:data:`DISTRIBUTIONS`, :data:`FAST_METHODS`), so that
rewording the prose never makes an atlas refuse to be extended.

Content keys: new units are keyed on the stable identifiers (:meth:`ScoringRecord.key`).
Atlases written before that keyed them on the prose record as it stands in the file
(:meth:`ScoringRecord.legacy_key`); an input whose units were committed under legacy keys
keeps them, so a re-run skips its committed work and never duplicates a row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

from seqatlas import schema

# stable id -> the prose written to the manifest for it
DISTRIBUTIONS = {
    "standard-letters": (
        "over the kind's standard letters; a masked token's distribution is renormalised over "
        "vocabulary tokens of its length made of those letters and marginalised to the base; "
        "logp and rank are null for other letters"),
}
# earlier wordings of a distribution -> its id (add the old text here when rewording one)
_DISTRIBUTION_WORDINGS = {text: key for key, text in DISTRIBUTIONS.items()}

FAST_METHODS = {"round-robin": re.compile(r"^a mask unit is .*; the owned mask units of a "
                                          r"window, in order, are dealt into \d+ passes")}


def fast_method_text(unit: str, stride: int) -> str:
    """The prose of the ``round-robin`` fast method for a mask ``unit`` and ``stride``."""
    return (f"a mask unit is {unit}; the owned mask units of a window, in order, are dealt "
            f"into {stride} passes (unit i goes to pass i mod {stride}), so units masked "
            f"together are {stride} apart; each base's logp, entropy and rank come from the "
            "pass that masks its unit")


def _fast_method_id(text: str) -> str:
    for key, pattern in FAST_METHODS.items():
        if pattern.match(text):
            return key
    return text  # an unknown method: its text is its identity


KEY_SCHEME = 2  # content keys from stable identifiers (1: the legacy prose record)

# model.tokenizer keys that are prose for people, not part of what the tokenizer is
_TOKENIZER_PROSE = ("combine",)


@dataclass
class FastRecord:
    """Fast mode's mask schedule: ``stride`` passes, one mask unit in ``stride`` per pass."""

    stride: int
    mask_rate: float
    method: str = "round-robin"  # stable id
    method_text: str = ""  # its prose, as written

    @classmethod
    def from_json(cls, data: dict) -> FastRecord:
        text = data.get("method", "")
        return cls(stride=data["stride"], mask_rate=data["mask_rate"],
                   method=_fast_method_id(text), method_text=text)

    def to_json(self) -> dict:
        return {"stride": self.stride, "mask_rate": self.mask_rate, "method": self.method_text}

    def key(self) -> dict:
        return {"stride": self.stride, "mask_rate": self.mask_rate, "method": self.method}


@dataclass
class ScoringRecord:
    """The settings that change the values: an extension must use the same ones."""

    likelihood: str = "none"
    embeddings: bool = False
    window: int | None = None
    overlap: int | None = None
    unit_tokens: int | None = None
    strands: str = "forward"
    embedding_dtype: str | None = None
    layer: int | None = None  # the layer of the tokens column "embedding"
    layers: list[int] | None = None  # every stored layer; absent before multi-layer ingest
    skip_n_runs: int | None = None
    copy_k: int | None = None  # the in-context copy detector's k; 0 = off
    distribution: str = "standard-letters"  # stable id
    distribution_text: str = DISTRIBUTIONS["standard-letters"]
    fast: FastRecord | None = None
    # per-position distributions (schema.LETTER_COLUMNS): their dtype (None: not stored) and
    # letters, in the order of each list
    letter_dtype: str | None = None
    distribution_letters: str | None = None
    # the arithmetic of the forward passes when not float32 ("bfloat16": opt-in, changes the
    # values within its stated tolerance); None, and absent from the file: float32
    precision: str | None = None
    absent: tuple[str, ...] = ()  # keys an older atlas does not record (kept absent)

    _OPTIONAL = ("likelihood", "embeddings", "window", "overlap", "unit_tokens", "strands",
                 "embedding_dtype", "layer", "layers", "skip_n_runs", "copy_k", "distribution",
                 "letter_dtype", "distribution_letters")

    @classmethod
    def from_json(cls, data: dict) -> ScoringRecord:
        text = data.get("distribution", DISTRIBUTIONS["standard-letters"])
        return cls(
            likelihood=data.get("likelihood", "none"), embeddings=data.get("embeddings", False),
            window=data.get("window"), overlap=data.get("overlap"),
            unit_tokens=data.get("unit_tokens"), strands=data.get("strands", "forward"),
            embedding_dtype=data.get("embedding_dtype"),
            layer=data.get("layer"), layers=data.get("layers"),
            skip_n_runs=data.get("skip_n_runs"), copy_k=data.get("copy_k"),
            distribution=_DISTRIBUTION_WORDINGS.get(text, text), distribution_text=text,
            fast=FastRecord.from_json(data["fast"]) if "fast" in data else None,
            letter_dtype=data.get("letter_dtype"),
            distribution_letters=data.get("distribution_letters"),
            precision=data.get("precision"),
            absent=tuple(k for k in cls._OPTIONAL if k not in data))

    def to_json(self) -> dict:
        data = {"likelihood": self.likelihood, "embeddings": self.embeddings,
                "embedding_dtype": self.embedding_dtype, "layer": self.layer,
                "layers": self.layers, "window": self.window, "overlap": self.overlap,
                "unit_tokens": self.unit_tokens, "strands": self.strands,
                "skip_n_runs": self.skip_n_runs, "copy_k": self.copy_k,
                "distribution": self.distribution_text, "letter_dtype": self.letter_dtype,
                "distribution_letters": self.distribution_letters}
        for key in self.absent:
            data.pop(key)
        if self.fast is not None:
            data["fast"] = self.fast.to_json()
        if self.precision not in (None, "float32"):  # float32 atlases keep their keys
            data["precision"] = self.precision
        return data

    def settings(self) -> dict:
        """Every setting by its stable value (what compatibility compares)."""
        data = {**self.to_json(), "distribution": self.distribution,
                "layers": self.stored_layers() or None}
        if self.fast is not None:
            data["fast"] = self.fast.key()
        return data

    def key(self) -> str:
        """This record's part of every unit's content key, from stable identifiers only."""
        settings = self.settings()
        if not (settings["layers"] and len(settings["layers"]) > 1):
            settings.pop("layers")  # one layer is the "layer" setting
        return json.dumps({"key_scheme": KEY_SCHEME, **settings}, sort_keys=True)

    def legacy_key(self) -> str:
        """The content-key material of atlases written before stable identifiers: the record
        as it stands in the file, ``layers`` only when there are several."""
        data = self.to_json()
        layers = data.get("layers")
        if not (layers and len(layers) > 1):
            data.pop("layers", None)
        return repr(sorted(data.items()))

    def likelihood_column(self) -> str | None:
        """The positions column holding the main likelihood: masked logp (exact, fast) or the
        causal logp (causal), else unmasked; the strand mean with both strands; None without a likelihood."""
        column = {"exact": "logp", "fast": "logp", "unmasked": "logp_unmasked",
                  "causal": "logp"}.get(
            self.likelihood)
        if column is None:
            return None
        return column + ("_mean" if self.strands == "both" else "")

    def stores_distributions(self) -> bool:
        """Whether positions hold ``letter_logp`` (and ``letter_logp_rc``)."""
        return bool(self.letter_dtype and self.distribution_letters)

    def distribution_column(self, strand: str = "+") -> str | None:
        """The positions column whose distribution gives this atlas's main likelihood on
        ``strand`` ("+" forward, "-" reverse); None when distributions are not stored."""
        if not self.stores_distributions():
            return None
        return schema.LETTER_COLUMNS[0 if strand == "+" else 1]

    def stored_layers(self) -> list[int]:
        """The hidden layers stored, the ``embedding`` column's first; [] if none (atlases
        written before multi-layer ingest record only ``layer``)."""
        if not self.embeddings:
            return []
        layers = self.layers if self.layers is not None else \
            [self.layer] if self.layer is not None else []
        return [int(layer) for layer in layers]

    def embedding_columns(self) -> dict[int, str]:
        """Stored layer -> tokens column, in the order the layers were requested."""
        layers = self.stored_layers()
        return {layer: schema.layer_column(layers, layer) for layer in layers}


@dataclass
class ModelRecord:
    """The checkpoint an atlas was scored with (weights by hash)."""

    name: str
    weights_sha256: str
    tokenizer: dict
    hidden_size: int | None = None
    num_layers: int | None = None
    context_tokens: int | None = None
    extra: dict = field(default_factory=dict)  # source, path, model_type, parameters, ...
    absent: tuple[str, ...] = ()  # keys an older or hand-made manifest does not record

    _FIELDS = ("name", "weights_sha256", "tokenizer", "hidden_size", "num_layers",
               "context_tokens")

    @classmethod
    def from_json(cls, data: dict) -> ModelRecord:
        return cls(**{k: data.get(k) for k in cls._FIELDS},
                   extra={k: v for k, v in data.items() if k not in cls._FIELDS},
                   absent=tuple(k for k in cls._FIELDS if k not in data))

    def to_json(self) -> dict:
        data = {k: getattr(self, k) for k in self._FIELDS if k not in self.absent}
        return {**self.extra, **data}

    def tokenizer_settings(self) -> dict:
        """The tokenizer record without its prose (what compatibility compares)."""
        return {k: v for k, v in (self.tokenizer or {}).items() if k not in _TOKENIZER_PROSE}

    def get(self, key: str, default: Any = None) -> Any:
        """A field or extra value by name (for display code that lists them)."""
        return self.to_json().get(key, default)


@dataclass
class InputRecord:
    """A FASTA file registered in the atlas."""

    path: str
    size: int
    sha256: str
    kind: str
    records: int
    residues: int
    first_ordinal: int | None

    @classmethod
    def from_json(cls, data: dict) -> InputRecord:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PartRecord:
    """A committed Parquet part: rows, bytes, the unit (content key) that wrote it, and the
    SHA-256 of its bytes (None for parts committed before checksums were recorded).

    ``stats`` (absent in parts committed before the commit log): the part's key ranges,
    ``{"seq_id": [min, max], "pos": [min, max]}`` (``pos`` spans ``start``..``end`` in tables
    of intervals), so that a region read opens only the parts that can hold it. ``units``:
    for a part written by compaction, every unit whose rows it holds (``unit`` is then
    ``"compacted"``)."""

    rows: int
    bytes: int
    unit: str
    sha256: str | None = None
    stats: dict | None = None
    units: list[str] | None = None

    @classmethod
    def from_json(cls, data: dict) -> PartRecord:
        record = cls(rows=data["rows"], bytes=data["bytes"], unit=data["unit"],
                     sha256=data.get("sha256"), stats=data.get("stats"),
                     units=data.get("units"))
        if not (isinstance(record.rows, int) and isinstance(record.bytes, int)
                and isinstance(record.unit, str)
                and isinstance(record.sha256, (str, type(None)))
                and _stats_shape(record.stats)
                and (record.units is None or (isinstance(record.units, list) and all(
                    isinstance(u, str) for u in record.units)))):
            raise TypeError(f"part record {data!r}")
        return record

    def to_json(self) -> dict:
        data = {"rows": self.rows, "bytes": self.bytes, "unit": self.unit}
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        if self.stats is not None:
            data["stats"] = self.stats
        if self.units is not None:
            data["units"] = self.units
        return data

    def covered_units(self) -> list[str]:
        """The units whose rows this part holds (one, unless compaction merged several)."""
        return list(self.units) if self.units is not None else [self.unit]

    def may_hold(self, seq_id: str, start: int | None, end: int | None) -> bool:
        """Whether this part can hold rows of ``seq_id`` in ``[start, end)`` (True when it
        records no statistics)."""
        stats = self.stats or {}
        ids, pos = stats.get("seq_id"), stats.get("pos")
        if ids and not (ids[0] <= seq_id <= ids[1]):
            return False
        if pos and ids and ids[0] == ids[1] and start is not None and end is not None:
            return pos[0] < end and start <= pos[1]
        return True


def _stats_shape(stats) -> bool:
    """Whether part statistics are None or ``{"seq_id": [str, str], "pos": [int, int]}``."""
    if stats is None:
        return True
    if not isinstance(stats, dict) or set(stats) != {"seq_id", "pos"}:
        return False
    ids, pos = stats["seq_id"], stats["pos"]
    return isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) for i in ids) \
        and isinstance(pos, list) and len(pos) == 2 and all(
            isinstance(p, int) and not isinstance(p, bool) for p in pos)


_INT, _NUM, _STR, _BOOL = (int,), (int, float), (str,), (bool,)
_OPT_INT, _OPT_STR, _DICT = (int, type(None)), (str, type(None)), (dict,)
# The type of every key a manifest may hold (absent keys are checked by the readers).
_SHAPE = {
    "": {"schema_version": _INT, "seqatlas_version": _STR, "created": _STR, "updated": _STR,
         "kind": _OPT_STR, "kind_detected": _BOOL, "model": (dict, type(None)),
         "scoring": (dict, type(None)), "inputs": (list,), "parts": _DICT, "units": _DICT,
         "cache": (dict, type(None)), "indexes": (dict, type(None)), "warnings": (list,),
         "runs": (list,), "log": (dict,), "retired": (dict,), "pooling": (dict, type(None))},
    "model": {"name": _STR, "weights_sha256": _STR, "tokenizer": _DICT,
              "hidden_size": _OPT_INT, "num_layers": _OPT_INT, "context_tokens": _OPT_INT},
    "scoring": {"likelihood": _STR, "embeddings": _BOOL, "window": _OPT_INT,
                "overlap": _OPT_INT, "unit_tokens": _OPT_INT, "strands": _STR,
                "embedding_dtype": _OPT_STR, "layer": _OPT_INT, "layers": (list, type(None)),
                "skip_n_runs": _OPT_INT, "copy_k": _OPT_INT, "distribution": _STR,
                "fast": _DICT, "letter_dtype": _OPT_STR, "distribution_letters": _OPT_STR,
                "precision": _STR},
    "fast": {"stride": _INT, "mask_rate": _NUM, "method": _STR},
    "pooling": {"bin": _INT, "level": _STR, "poolings": (list,), "layers": (list,)},
    "input": {"path": _STR, "size": _INT, "sha256": _STR, "kind": _STR, "records": _INT,
              "residues": _INT, "first_ordinal": _OPT_INT},
    "warning": {"code": _STR, "message": _STR, "model": _STR, "column": _STR,
                "mean_logp": _NUM, "baseline": _NUM, "positions": _INT},
}


def _check_shape(data, shape: str, where: str) -> None:
    """Raise ``TypeError`` naming the first key of ``data`` whose value has the wrong type
    (``bool`` is not accepted where an integer is meant)."""
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'the manifest'} (not an object)")
    for key, types in _SHAPE[shape].items():
        if key in data:
            value = data[key]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise TypeError(f"{where + '.' if where else ''}{key} ({value!r})")


def _log_version(log) -> int | None:
    if log is None:
        return None
    version = log.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise TypeError(f"log.version ({version!r})")
    return version


def validate_manifest(data) -> None:
    """Check the types of everything :meth:`Manifest.from_json` and its readers use;
    ``KeyError``/``TypeError`` name what is missing or misshapen."""
    _check_shape(data, "", "")
    for key in ("schema_version", "seqatlas_version", "created", "updated", "kind", "inputs",
                "parts", "units"):
        if key not in data:
            raise KeyError(key)
    if data.get("model"):
        _check_shape(data["model"], "model", "model")
        for key in ("name", "weights_sha256", "tokenizer"):
            if key not in data["model"]:
                raise KeyError(f"model.{key}")
    if data.get("scoring"):
        _check_shape(data["scoring"], "scoring", "scoring")
        layers = data["scoring"].get("layers")
        if layers is not None and not all(isinstance(x, int) and not isinstance(x, bool)
                                           for x in layers):
            raise TypeError(f"scoring.layers ({layers!r})")
        if "fast" in data["scoring"]:
            _check_shape(data["scoring"]["fast"], "fast", "scoring.fast")
    if data.get("pooling"):
        pooling = data["pooling"]
        _check_shape(pooling, "pooling", "pooling")
        for key in ("bin", "poolings", "layers"):
            if key not in pooling:
                raise KeyError(f"pooling.{key}")
        if pooling["bin"] < 0 or not all(isinstance(p, str) for p in pooling["poolings"]) or \
                not all(isinstance(x, int) and not isinstance(x, bool)
                        for x in pooling["layers"]):
            raise TypeError(f"pooling ({pooling!r})")
    for i, record in enumerate(data["inputs"]):
        _check_shape(record, "input", f"inputs[{i}]")
        for key in _SHAPE["input"]:
            if key not in record:
                raise KeyError(f"inputs[{i}].{key}")
    for i, warning in enumerate(data.get("warnings", [])):
        _check_shape(warning, "warning", f"warnings[{i}]")
        for key in ("code", "message"):
            if key not in warning:
                raise KeyError(f"warnings[{i}].{key}")
    for i, run in enumerate(data.get("runs", [])):
        if not isinstance(run, dict):
            raise TypeError(f"runs[{i}]")
    for table, parts in data["parts"].items():
        if not isinstance(parts, dict) or not all(isinstance(m, dict) for m in parts.values()):
            raise TypeError(f"parts.{table}")
        for name in parts:  # a part is a file of its table's directory, never a path
            if "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
                raise TypeError(f"parts.{table} (part name {name!r})")
    for name, unit in data["units"].items():
        if not isinstance(unit, dict):
            raise TypeError(f"units.{name}")
        for key in ("positions", "unscored", "real_tokens", "computed_tokens"):
            value = unit.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"units.{name}.{key} ({value!r})")


@dataclass
class Manifest:
    """``atlas.json``. ``units`` (content key -> what the unit was), ``cache`` (derived values)
    and ``indexes`` (index name -> meta) are open records and stay plain dicts. ``warnings``
    (absent in older atlases): what seqatlas found doubtful about the atlas's values, each
    ``{"code", "message", ...}``; so far a model whose mean logp is below the uniform
    baseline (code ``low_likelihood``, :mod:`seqatlas.checkpoints.fit`). ``runs`` (absent
    until an ingest scored something): one open record per scoring run, the most recent
    last: when, how many units and positions, on which nodes, and the bytes that crossed
    the driver (``driver_bytes``)."""

    schema_version: int
    seqatlas_version: str
    created: str
    updated: str
    kind: str | None
    kind_detected: bool
    model: ModelRecord | None
    scoring: ScoringRecord | None
    inputs: list[InputRecord] = field(default_factory=list)
    parts: dict[str, dict[str, PartRecord]] = field(default_factory=dict)
    units: dict[str, dict] = field(default_factory=dict)
    cache: dict | None = None
    indexes: dict[str, dict] | None = None
    warnings: list[dict] | None = None
    runs: list[dict] | None = None
    # the commit-log version this state is at (None: an atlas written before the log, whose
    # atlas.json is all there is); written as {"log": {"version": N}}
    log_version: int | None = None
    # parts replaced by compaction ("table/name" -> when): kept a while for readers that
    # opened an earlier version, then deleted by a writer
    retired: dict[str, str] | None = None
    # what the pooled table holds (absent: no pooled embeddings): {"bin": bases per bin, 0
    # for one row per sequence, "poolings": [...], "layers": [...]}
    pooling: dict | None = None

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        """The one reader; raises ``KeyError``/``TypeError`` on a manifest missing its keys."""
        validate_manifest(data)
        return cls(
            schema_version=data["schema_version"], seqatlas_version=data["seqatlas_version"],
            created=data["created"], updated=data["updated"], kind=data["kind"],
            kind_detected=data.get("kind_detected", False),
            model=ModelRecord.from_json(data["model"]) if data.get("model") else None,
            scoring=ScoringRecord.from_json(data["scoring"]) if data.get("scoring") else None,
            inputs=[InputRecord.from_json(i) for i in data["inputs"]],
            parts={table: {name: PartRecord.from_json(meta) for name, meta in parts.items()}
                   for table, parts in data["parts"].items()},
            units=dict(data["units"]), cache=data.get("cache"), indexes=data.get("indexes"),
            warnings=[dict(w) for w in data["warnings"]] if "warnings" in data else None,
            runs=[dict(r) for r in data["runs"]] if "runs" in data else None,
            log_version=_log_version(data.get("log")),
            retired=dict(data["retired"]) if data.get("retired") else None,
            pooling=dict(data["pooling"]) if data.get("pooling") else None)

    def to_json(self) -> dict:
        """The one writer: the keys seqatlas has always written."""
        data = {
            "schema_version": self.schema_version, "seqatlas_version": self.seqatlas_version,
            "created": self.created, "updated": self.updated, "kind": self.kind,
            "kind_detected": self.kind_detected,
            "model": self.model.to_json() if self.model else None,
            "scoring": self.scoring.to_json() if self.scoring else None,
            "inputs": [i.to_json() for i in self.inputs],
            "parts": {table: {name: p.to_json() for name, p in parts.items()}
                      for table, parts in self.parts.items()},
            "units": self.units,
        }
        if self.cache is not None:
            data["cache"] = self.cache
        if self.indexes is not None:
            data["indexes"] = self.indexes
        if self.warnings is not None:
            data["warnings"] = self.warnings
        if self.runs is not None:
            data["runs"] = self.runs
        if self.log_version is not None:
            data["log"] = {"version": self.log_version}
        if self.retired:
            data["retired"] = self.retired
        if self.pooling:
            data["pooling"] = self.pooling
        return data

    def legacy_keys(self) -> bool:
        """Whether this atlas's scored units were keyed before stable identifiers (their
        unit records carry no ``key_scheme``); such an atlas keeps its keys."""
        return any("seq_ids" in unit and "key_scheme" not in unit
                   for unit in self.units.values())

    def __getitem__(self, key: str) -> Any:
        """Read-only dict access for code written when the manifest was a dict
        (``atlas.manifest["scoring"]["window"]``); a copy, so changes do not persist."""
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Read-only dict access, as :meth:`__getitem__`."""
        return self.to_json().get(key, default)

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    def table_parts(self, table: str) -> dict[str, PartRecord]:
        """The committed parts of ``table`` by file name ({} when none)."""
        return self.parts.get(table, {})

    def cached(self, *path: str) -> Any:
        """The cached value at ``path`` under ``cache``, or None."""
        node: Any = self.cache or {}
        for name in path:
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        return node

    def positions_schema(self):
        """The positions schema of this atlas (with its distribution columns, if stored)."""
        scoring = self.scoring
        if scoring is None or not scoring.stores_distributions():
            return schema.POSITIONS
        return schema.positions_schema(len(scoring.distribution_letters), scoring.letter_dtype)

    def pooled_schema(self):
        """The pooled schema of this atlas (the model width when it stores embeddings)."""
        layers = self.scoring.stored_layers() if self.scoring else []
        return schema.pooled_schema(self.model.hidden_size if layers and self.model else None)

    def tokens_schema(self):
        """The tokens schema of this atlas (model width and stored layers)."""
        layers = self.scoring.stored_layers() if self.scoring else []
        dim = self.model.hidden_size if layers and self.model else None
        return schema.tokens_schema(dim, extra_layers=layers[1:])
