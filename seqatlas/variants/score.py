"""``variants score``: the LLR of each variant from the atlas's per-position distributions.

``llr = log p(alt) - log p(ref)`` at the site, from the distribution the atlas's likelihood
comes from (masked marginal for exact/fast, wild-type marginal for unmasked), over the
kind's standard letters. DNA/RNA scored on both strands: ``llr_fwd``, ``llr_rc`` (the
reverse strand's, in forward letters) and ``llr`` their mean (GPN's convention); one strand:
``llr = llr_fwd``. A multi-mutant's LLRs are the sums over its sites (ProteinGym's
convention); ``--joint`` adds ``llr_joint``, every site masked at once. An atlas that does
not store distributions has its sites rescored with its own model and settings
(:mod:`seqatlas.variants.rescoring`), giving the numbers a full ingest would store.
What cannot be scored is a row with ``problem`` set, never a dropped row.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ConfigError, InputError
from seqatlas.query.engine import Engine
from seqatlas.query.views import AnomalyParams, ablation_methods, create_anomaly_views
from seqatlas.scoring.ablation import METHODS
from seqatlas.store import AtlasReader, AtlasWriter
from seqatlas.variants import evaluation
from seqatlas.variants.formats import (FORMATS, VariantRecord, mutant_records,
                                       read_chrom_map, read_variants)
from seqatlas.variants.sites import PlacedSites, letter_problem, place

_MUTANT = re.compile(r"^\s*[A-Za-z*]\d+[A-Za-z*](\s*:\s*[A-Za-z*]\d+[A-Za-z*])*\s*$")
_LOOKUP = ("llr_intact", "llr_partner", "llr_control", "icl_shift", "control_shift",
           "lookup_shift", "llr_corrected")
_SUMMED = ("llr", "llr_fwd", "llr_rc", "llr_joint", "llr_intact", "llr_partner",
           "llr_control", "icl_shift", "control_shift", "lookup_shift", "llr_corrected")


@dataclass(frozen=True)
class VariantConfig:
    """Options of ``variants score``."""

    seq_id: str | None = None  # the sequence of variants that name none
    offset: int = 0  # the input numbers residues from offset + 1
    chrom_map: dict | str | Path | None = None  # input name -> atlas id (dict or 2-column file)
    format: str = "auto"  # auto | vcf | mutants | tsv
    mutant_column: str = "mutant"
    seq_id_column: str | None = None
    score_column: str | None = None  # measured scores (ProteinGym: DMS_score): evaluate
    bin_column: str | None = None  # measured classes (DMS_score_bin)
    joint: bool = False  # also llr_joint: all sites of a multi-mutant masked at once
    lookup: bool = False  # rescore each site with its copy partner / control corrupted
    method: str = "mask"  # --lookup's corruption (seqatlas.scoring.ablation)
    seed: int = 0
    per_site: bool = False  # one row per site instead of per variant
    store: str | None = None  # commit the variants as this named set (``variants`` table)
    ablation_method: str | None = None  # whose stored icl values to show (default: first)
    model: str | None = None  # the atlas's checkpoint, when its recorded path moved
    workers: int | None = 0  # rescoring actors; 0: this process
    batch_tokens: int | None = None
    progress: bool | str = True

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not "
                              f"{self.format!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise ConfigError(f"--offset must be a whole number, not {self.offset!r}")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not "
                              f"{self.method!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be an integer in [0, 2**63), not {self.seed!r}")
        if self.store is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", self.store):
            raise ConfigError(f"--store must be a name of letters, digits, '_', '.' or '-', "
                              f"not {self.store!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 0):
            raise ConfigError("--workers must be 0 (in process) or more")


@dataclass
class VariantScores:
    """What ``variants score`` returns: the rows, and the evaluation when measured scores
    were given (overall, and inside vs outside in-context copies)."""

    table: pa.Table
    evaluation: list[dict] | None = None
    variants: int = 0
    scored: int = 0
    unscored: int = 0
    sites_rescored: int = 0  # sites whose distributions were computed again
    stored_set: str | None = None
    problems: dict = field(default_factory=dict)  # reason -> count

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("table")
        return data


def _refuse_masking_of_a_causal_model(reader: AtlasReader, config: VariantConfig) -> None:
    """A causal model has no mask token: --joint (every site masked at once) and --lookup's
    mask corruption are not defined for it."""
    model = reader.manifest.model
    if model is None or model.extra.get("objective") != "causal":
        return
    if config.joint:
        raise ConfigError("--joint masks every site of a variant at once, and the atlas's "
                          "model is causal (no mask token): drop --joint")
    if config.lookup and config.method == "mask":
        raise ConfigError("the atlas's model is causal and has no mask token: pass --lookup "
                          "with --method shuffle or substitute")


def score_variants(variants, *, atlas, **options) -> VariantScores:
    """Score ``variants`` (a variant file's path, or a list of mutant strings and files)
    against ``atlas``; options as :class:`VariantConfig`."""
    config = VariantConfig(**options)
    config.validate()
    reader = AtlasReader(getattr(atlas, "path", atlas))
    scoring = reader.manifest.scoring
    if scoring is None or scoring.likelihood == "none":
        raise ConfigError(f"{reader.path} holds no likelihoods (ingested with --likelihood "
                          "none): re-ingest with --likelihood exact, fast or unmasked")
    _refuse_masking_of_a_causal_model(reader, config)
    records = read_inputs(variants, config)
    letters = distribution_letters(reader)
    placed = place(records, atlas_ids=_sequence_ids(reader), lengths=_lengths(reader),
                   seq_id=config.seq_id, offset=config.offset,
                   chrom_map=_chrom_map(config.chrom_map))
    sites = read_sites(reader, placed, config.ablation_method)
    _check_reference(placed, sites, letters)
    values = site_values(reader, placed, sites, letters, config)
    per = site_table(placed, sites, values, letters)
    result = assemble(records, placed, sites, values, per, per_site=config.per_site)
    if config.store is not None:
        store_variant_set(reader.path, config.store,
                          variant_set_table(config.store, records, placed, per, config))
        result.stored_set = config.store
    if config.score_column is not None:
        result.evaluation = evaluate_table(result.table)
    return result


# -- inputs --------------------------------------------------------------------------------

def read_inputs(variants, config: VariantConfig) -> list[VariantRecord]:
    """Records from a file path, or from a list mixing mutant strings and file paths."""
    items = [variants] if isinstance(variants, (str, os.PathLike)) else list(variants)
    if not items:
        raise ConfigError("no variants given: pass a variant file or mutant strings "
                          "such as A123G")
    mutants = [str(i) for i in items if _is_mutant_text(i)]
    files = [i for i in items if not _is_mutant_text(i)]
    records = mutant_records(mutants, seq_id=None) if mutants else []
    table_options = {"mutant_column": config.mutant_column,
                     "seq_id_column": config.seq_id_column,
                     "score_column": config.score_column, "bin_column": config.bin_column}
    for path in files:
        if str(path) != "-" and not Path(path).is_file():
            raise InputError(f"{path}: no such file (and not a mutant string like A123G)")
        records += read_variants(path, format=config.format, **table_options)
    if config.score_column is not None and all(r.score is None for r in records):
        raise InputError(f"--score-column {config.score_column}: no variant has a measured "
                         "score")
    return records


def _is_mutant_text(item) -> bool:
    text = str(item)
    return bool(_MUTANT.match(text)) and not Path(text).exists()


def _chrom_map(value) -> dict[str, str] | None:
    if value is None or isinstance(value, dict):
        return value
    return read_chrom_map(value)


def _sequence_ids(reader: AtlasReader) -> list[str]:
    return reader.sequences(["seq_id"])["seq_id"].to_pylist()


def _lengths(reader: AtlasReader) -> dict[str, int]:
    table = reader.sequences(["seq_id", "length"])
    return dict(zip(table["seq_id"].to_pylist(), table["length"].to_pylist()))


def distribution_letters(reader: AtlasReader) -> str:
    """The standard letters an atlas's distributions are over (from the manifest)."""
    scoring, model = reader.manifest.scoring, reader.manifest.model
    if scoring.distribution_letters:
        return scoring.distribution_letters
    return (model.tokenizer or {}).get("letters") or \
        {"protein": "ACDEFGHIKLMNPQRSTVWY", "dna": "ACGT", "rna": "ACGU"}[reader.manifest.kind]


# -- what the atlas holds at the sites -----------------------------------------------------

def read_sites(reader: AtlasReader, placed: PlacedSites, ablation_method: str | None
               ) -> dict[str, np.ndarray | list]:
    """The positions row at every placed site (ref, window, copy, entropy, stored
    distributions), its robust z, the stored icl values and the repeat classes over it;
    one entry per site, null where the site has no row."""
    n = len(placed)
    keys = pa.table({"i": pa.array(np.arange(n, dtype=np.int64)),
                     "seq_id": pa.array(placed.seq_id, pa.string()),
                     "pos": pa.array(placed.pos, pa.int64())})
    with Engine(reader, anomaly_views=False) as engine:
        methods = ablation_methods(engine)
        method = ablation_method or (methods[0] if methods else None)
        if ablation_method is not None and ablation_method not in methods:
            raise ConfigError(f"{reader.path} has no {ablation_method!r} ablations "
                              f"(it has {', '.join(methods) or 'none'})")
        create_anomaly_views(engine, AnomalyParams(ablation_method=method), compute=False)
        engine.con.register("_variant_sites", keys)
        letters = ", p.letter_logp, p.letter_logp_rc" if \
            reader.manifest.scoring.stores_distributions() else ""
        table = engine.fetch_internal(f"""
            SELECT s.i, p.ref AS atlas_ref, p.entropy, p.window_start, p.window_end,
                   p.copy_offset, p.copy_strand{letters}, z.z, z.icl_gain, z.control_gain,
                   z.net_gain, rc.classes AS repeat_classes
            FROM _variant_sites s
            LEFT JOIN positions p ON p.seq_id = s.seq_id AND p.pos = s.pos
            LEFT JOIN position_z z ON z.seq_id = s.seq_id AND z.pos = s.pos
            LEFT JOIN (SELECT s2.i, string_agg(DISTINCT r.class, ',' ORDER BY r.class)
                              AS classes
                       FROM _variant_sites s2 JOIN repeats r ON r.seq_id = s2.seq_id
                            AND r.start <= s2.pos AND r."end" > s2.pos
                       GROUP BY s2.i) rc ON rc.i = s.i
            ORDER BY s.i""")
    out: dict[str, np.ndarray | list] = {}
    for name in table.column_names:
        column = table[name]
        if name.startswith("letter_logp"):
            out[name] = _letter_matrix(column, len(distribution_letters(reader)))
        else:
            out[name] = column.to_pylist()
    return out


def _letter_matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A list column as an (n, width) float array, NaN rows for nulls (-inf kept)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = np.full((len(array), width), np.nan)
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if valid.any():
        flat = array.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        values[valid] = np.asarray(flat, dtype=np.float64).reshape(-1, width)
    return values


def _check_reference(placed: PlacedSites, sites: dict, letters: str) -> None:
    """Problems found in the positions rows, in this order: REF not what the atlas has,
    not scored (a long N run), a reference or alternative letter outside the distribution."""
    for i in range(len(placed)):
        if placed.problem[i] is not None or placed.pos[i] is None:
            continue
        atlas_ref = sites["atlas_ref"][i]
        where = f"{placed.seq_id[i]}:{placed.pos[i] + 1}"
        if atlas_ref is None:
            placed.problem[i] = f"no positions row at {where} (the ingest of that sequence " \
                                "is incomplete: re-run it)"
        elif atlas_ref != placed.ref[i]:
            placed.problem[i] = f"REF {placed.ref[i]} does not match the atlas: it has " \
                                f"{atlas_ref} at {where} (1-based)"
        elif sites["window_start"][i] is None:
            placed.problem[i] = f"{where} was not scored (inside a long N run)"
        else:
            placed.problem[i] = letter_problem(placed.ref[i], placed.alt[i], letters)


# -- values --------------------------------------------------------------------------------

def site_values(reader: AtlasReader, placed: PlacedSites, sites: dict, letters: str,
                config: VariantConfig) -> dict[str, np.ndarray]:
    """Per site: the forward and reverse distributions (stored or rescored), and the
    joint and look-up LLRs when asked for."""
    from seqatlas.variants import lookup

    scoring = reader.manifest.scoring
    n, width = len(placed), len(letters)
    ok = np.array([p is None for p in placed.problem], dtype=bool)
    fwd = sites.get("letter_logp", np.full((n, width), np.nan))
    rc = sites.get("letter_logp_rc", np.full((n, width), np.nan))
    values: dict[str, np.ndarray] = {"rescored": np.zeros(n, dtype=bool)}
    need = ok & np.isnan(fwd).all(axis=1)
    if scoring.strands == "both":
        need |= ok & np.isnan(rc).all(axis=1)
    if need.any():
        context = lookup.RescoreContext.build(reader, placed, sites, config,
                                              mode=scoring.likelihood)
        fwd_new, rc_new = context.intact(np.flatnonzero(need))
        fwd[need], values["rescored"][need] = fwd_new, True
        if scoring.strands == "both":
            rc[need] = rc_new
    values["fwd"], values["rc"] = fwd, rc if scoring.strands == "both" else None
    if config.joint:
        values.update(lookup.joint_llrs(reader, placed, sites, config, ok, letters))
    if config.lookup:
        values.update(lookup.lookup_llrs(reader, placed, sites, config, ok, letters,
                                         intact=(fwd, rc)))
    return values


def _llr(dist: np.ndarray | None, ref_index: np.ndarray, alt_index: np.ndarray
         ) -> np.ndarray:
    if dist is None:
        return np.full(len(ref_index), np.nan)
    rows = np.arange(len(ref_index))
    return dist[rows, alt_index] - dist[rows, ref_index]


def _letter_indices(placed: PlacedSites, letters: str) -> tuple[np.ndarray, np.ndarray]:
    index = {c: k for k, c in enumerate(letters)}
    ref = np.array([index.get(r or "", 0) for r in placed.ref], dtype=np.int64)
    alt = np.array([index.get(a or "", 0) for a in placed.alt], dtype=np.int64)
    return ref, alt


def site_table(placed: PlacedSites, sites: dict, values: dict, letters: str) -> dict:
    """Per-site columns (LLRs, p, rank) with problems for sites the model cannot score."""
    ref, alt = _letter_indices(placed, letters)
    fwd, rc = values["fwd"], values["rc"]
    llr_fwd, llr_rc = _llr(fwd, ref, alt), _llr(rc, ref, alt)
    both = rc is not None
    probs = np.exp(fwd) if not both else (np.exp(fwd) + np.exp(rc)) / 2
    rows = np.arange(len(ref))
    p_alt, p_ref = probs[rows, alt], probs[rows, ref]
    rank = 1 + (probs > p_alt[:, None]).sum(axis=1)
    for i in range(len(placed)):
        if placed.problem[i] is None and not (np.isfinite(llr_fwd[i]) and
                                              (not both or np.isfinite(llr_rc[i]))):
            placed.problem[i] = (f"the model gives {placed.alt[i]} or {placed.ref[i]} no "
                                 "probability there (no token of its vocabulary holds it)")
    columns = {"llr_fwd": llr_fwd, "llr_rc": llr_rc,
               "llr": (llr_fwd + llr_rc) / 2 if both else llr_fwd,
               "p_alt": p_alt, "p_ref": p_ref, "rank_alt": rank}
    for name in ("llr_joint", "llr_intact", "llr_partner", "llr_control"):
        if name in values:
            columns[name] = values[name]
    if "llr_partner" in values:
        columns["icl_shift"] = columns["llr_intact"] - columns["llr_partner"]
        columns["control_shift"] = columns["llr_intact"] - columns["llr_control"]
        columns["lookup_shift"] = columns["icl_shift"] - columns["control_shift"]
        columns["llr_corrected"] = columns["llr_intact"] - columns["lookup_shift"]
        columns["partner_mutated"] = values["partner_mutated"]
        columns["has_lookup"] = values["has_lookup"]
    return columns


# -- rows ----------------------------------------------------------------------------------

def assemble(records: list[VariantRecord], placed: PlacedSites, sites: dict, values: dict,
             per: dict, *, per_site: bool) -> VariantScores:
    """The output rows (:data:`seqatlas.schema.VARIANT_SCORES`), per variant or per site,
    from the per-site columns ``per`` (:func:`site_table`)."""
    by_variant: dict[int, list[int]] = {}
    for i, v in enumerate(placed.variant):
        by_variant.setdefault(v, []).append(i)
    rows = []
    problems: dict[str, int] = {}
    scored = 0
    for v, record in enumerate(records):
        idx = by_variant.get(v, [])
        problem = _variant_problem(record, placed, idx)
        if problem is None:
            scored += 1
        else:
            reason = problem.split(": ", 1)[-1] if len(idx) > 1 else problem
            problems[_reason_kind(reason)] = problems.get(_reason_kind(reason), 0) + 1
        base = _variant_base(record, placed, idx, sites, per, problem, values)
        if per_site:
            for k, i in enumerate(idx):
                site = {c: _value(per.get(c), i) if problem is None else None
                        for c in _SUMMED if c in per}
                if "has_lookup" in per and not per["has_lookup"][i]:
                    site.update(dict.fromkeys(_LOOKUP))
                rows.append({**base, "site": k,
                             **_site_fields(placed, sites, per, i, scored=problem is None),
                             **site})
        else:
            if len(idx) == 1:
                base.update(_site_fields(placed, sites, per, idx[0]))
            rows.append(base)
    table = pa.Table.from_pylist(rows, schema=schema.VARIANT_SCORES)
    return VariantScores(table=table, variants=len(records), scored=scored,
                         unscored=len(records) - scored, problems=problems,
                         sites_rescored=int(values["rescored"].sum()))


def _reason_kind(problem: str) -> str:
    """A problem's kind, for the summary (its text without the specifics)."""
    kinds = {"REF ": "REF mismatch", "indel": "indel", "symbolic": "symbolic allele",
             "sequence ": "sequence not in the atlas", "position ": "outside the sequence",
             "ref ": "not a standard letter", "alt ": "not a standard letter",
             "no alternate": "no alternate allele", "spanning": "spanning deletion",
             "stop": "stop codon", "no positions row": "not scored",
             "the model gives": "no probability", "ALT equals": "ALT equals REF"}
    for prefix, kind in kinds.items():
        if problem.startswith(prefix):
            return kind
    if "not scored" in problem:
        return "not scored"
    return problem[:40]


def _variant_problem(record: VariantRecord, placed: PlacedSites, idx: list[int]) -> str | None:
    problems = [(k, placed.problem[i]) for k, i in enumerate(idx) if placed.problem[i]]
    if not problems:
        return None
    if len(idx) == 1:
        return problems[0][1]
    k, text = problems[0]
    site = record.sites[k] if k < len(record.sites) else None
    label = f"{site.ref}{site.position}{site.alt}" if site else "site"
    return f"{label}: {text}"


def _value(array, i):
    if array is None:
        return None
    value = array[i]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    return int(value) if isinstance(value, (np.integer, int)) else value


def _variant_base(record, placed, idx, sites, per, problem, values) -> dict:
    ok = problem is None
    summed = {}
    for name in _SUMMED:
        if name not in per:
            continue
        parts = [per[name][i] for i in idx]
        summed[name] = float(np.sum(parts)) if ok and parts and \
            all(np.isfinite(parts)) else None
    if "has_lookup" in per and not any(per["has_lookup"][i] for i in idx):
        for name in _LOOKUP:
            summed[name] = None
    copy = [sites["copy_offset"][i] is not None for i in idx if placed.problem[i] is None]
    mutated = [bool(per["partner_mutated"][i]) for i in idx] if "partner_mutated" in per \
        else None
    return {
        "variant_id": record.variant_id, "site": None, "source": record.source,
        "line": record.line, "input_seq_id": record.seq_id,
        "seq_id": placed.seq_id[idx[0]] if idx else None, "n_sites": len(record.sites),
        **summed,
        "repeat_classes": _classes(sites, idx),
        "in_copy": any(copy) if copy else None,
        "partner_mutated": any(mutated) if mutated else None,
        "measured_score": record.score, "measured_bin": record.bin,
        "duplicate_of": record.duplicate_of,
        "distribution": None if not ok else
        ("rescored" if any(values["rescored"][i] for i in idx) else "stored"),
        "problem": problem,
    }


def _classes(sites: dict, idx: list[int]) -> str | None:
    found = sorted({c for i in idx for c in (sites["repeat_classes"][i] or "").split(",") if c})
    return ",".join(found) if found else None


def _site_fields(placed: PlacedSites, sites: dict, per: dict, i: int, *,
                 scored: bool = True) -> dict:
    ok = scored and placed.problem[i] is None
    fields = {"input_position": placed.input_position[i], "pos": placed.pos[i],
              "ref": placed.ref[i], "alt": placed.alt[i],
              "atlas_ref": sites["atlas_ref"][i],
              "entropy": _finite(sites["entropy"][i]), "z": _finite(sites["z"][i]),
              "copy_offset": sites["copy_offset"][i], "copy_strand": sites["copy_strand"][i],
              "icl_gain": sites["icl_gain"][i], "control_gain": sites["control_gain"][i],
              "net_gain": sites["net_gain"][i]}
    for name in ("p_alt", "p_ref", "rank_alt"):
        fields[name] = _value(per[name], i) if ok else None
    return fields


def _finite(value):
    return None if value is None or not np.isfinite(value) else value


# -- evaluation and storage ----------------------------------------------------------------

def evaluate_table(table: pa.Table) -> list[dict]:
    """Spearman, AUC, MCC, NDCG and top-10% recall of ``llr`` against the measured scores,
    overall and for variants inside vs outside in-context copies."""
    predicted = np.array([np.nan if v is None else v for v in table["llr"].to_pylist()])
    measured = np.array([np.nan if v is None else v
                         for v in table["measured_score"].to_pylist()])
    bins_list = table["measured_bin"].to_pylist()
    bins = None if all(b is None for b in bins_list) else \
        np.array([np.nan if b is None else b for b in bins_list])
    groups = [None if c is None else ("in_copy" if c else "outside_copy")
              for c in table["in_copy"].to_pylist()]
    return evaluation.evaluate_groups(predicted, measured, groups, bins=bins)


def variant_set_table(name: str, records: list[VariantRecord], placed: PlacedSites,
                      per: dict, config: VariantConfig) -> pa.Table:
    """The ``variants`` rows of a named set: one per site (:data:`schema.VARIANTS`), with
    each site's LLR and, scored with ``--lookup``, its look-up rows."""
    lookup = "has_lookup" in per
    rows = []
    for i, v in enumerate(placed.variant):
        record = records[v]
        ok = placed.problem[i] is None
        looked = lookup and ok and bool(per["has_lookup"][i])
        rows.append({"variant_set": name, "variant_id": record.variant_id,
                     "source": record.source, "line": record.line, "seq_id": placed.seq_id[i],
                     "input_seq_id": record.seq_id, "pos": placed.pos[i],
                     "input_position": placed.input_position[i], "ref": placed.ref[i],
                     "alt": placed.alt[i], "n_sites": len(record.sites),
                     "measured_score": record.score, "measured_bin": record.bin,
                     "problem": placed.problem[i],
                     "llr": _value(per["llr"], i) if ok else None,
                     "lookup_method": config.method if looked else None,
                     "lookup_seed": config.seed if looked else None,
                     **{c: _value(per[c], i) if looked else None
                        for c in ("llr_intact", "llr_partner", "llr_control",
                                  "lookup_shift")}})
    return pa.Table.from_pylist(rows, schema=schema.VARIANTS)


def store_variant_set(path, name: str, table: pa.Table) -> None:
    """Commit the set's rows as one unit of the ``variants`` table, keyed on its name and
    content: the same set again is a no-op, another set under a taken name is refused."""
    import hashlib

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    digest = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    key = f"variants-{name}-{digest[:32]}"
    with AtlasWriter(path) as writer:
        for unit, record in writer.manifest.units.items():
            if record.get("variant_set") == name and unit != key:
                raise ConfigError(f"{path} already holds a different variant set named "
                                  f"{name!r}: choose another --store name")
        if key in writer.committed_units:
            return
        writer.commit(key, {"variants": table},
                      unit={"variant_set": name,
                            "variants": len(set(table["variant_id"].to_pylist())),
                            "sites": table.num_rows})
