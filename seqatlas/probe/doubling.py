"""``probe doubling``: the doubled-sequence construct of Kantroo, Wagner & Machta (2025).

For each sequence S of a FASTA file (and, with ``shuffle``, a seeded shuffle of S, whose
look-up effect is not hidden by what the model knows of natural sequences), the masked logp
of every residue of copy 1 (S itself) is averaged in five inputs:

- ``alone``: S;
- ``doubled``: S+S;
- ``partner``: S+S with copy 2 corrupted (``method``, :mod:`seqatlas.scoring.ablation`);
- ``control_intact``: S+C, where C is a seeded shuffle of S: same length, same distance,
  same composition, no copy of S;
- ``control``: S+C with C corrupted the same way (with ``mask`` it is the same input as
  ``partner``, and is scored once).

``icl_gain = doubled - partner`` is what copy 2 adds over its corrupted version;
``control_gain = control_intact - control`` is what a same-composition block adds over its
corrupted version, the damage corruption does without any look-up; ``net_gain`` is their
difference (= ``doubled - control_intact`` with ``mask``). ``doubling_gain = doubled -
alone``. Copy 1 is scored exactly as ``probe icl`` scores a target (every residue masked in
turn, exact; or the fast passes over the whole construct).

Direction: a causal model reads only what comes before a residue, so copy 1 can never look up
copy 2 (its gain is 0 by construction). With a causal model the probe scores copy 2
(``scored_copy`` 2, the default for causal models) in the mirrored inputs: ``alone`` S,
``doubled`` S+S, ``partner`` S+S with copy 1 corrupted, ``control_intact`` C+S and
``control`` C+S with C corrupted; ``--copy 1`` asks for copy 1 (of any model) to show it.
A causal model has no mask token: its corruption is ``shuffle`` (the default for it) or
``substitute``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ConfigError, InputError
from seqatlas.fasta import KINDS, detect_kind, read_fasta
from seqatlas.checkpoints import resolve_model
from seqatlas.checkpoints.fit import check_model_fit, count_letters
from seqatlas.progress import Meter
from seqatlas.query.output import write_result
from seqatlas.scoring.scorer import objective_refusal
from seqatlas.scoring.workers import make_executor, run_units
from seqatlas.scoring.ablation import (METHODS, RESCORE_LIKELIHOODS, RescoreTask, corrupt,
                                       region_rng, standard_letters)

VARIANTS = ("original", "shuffled")
# the five inputs, in the order their values come back
CONDITIONS = ("alone", "doubled", "partner", "control_intact", "control")


@dataclass(frozen=True)
class DoublingConfig:
    """Options of ``probe doubling``."""

    model: str = "antiberty"
    kind: str | None = None  # detected from the file when None
    method: str | None = None  # mask | shuffle | substitute; None: mask, shuffle for causal
    seed: int = 0
    shuffle: bool = False  # also probe a seeded shuffle of each sequence
    likelihood: str | None = None  # exact | fast | causal; None: exact, causal for causal
    copy: int | None = None  # the copy scored, 1 or 2; None: 1, 2 for causal models
    tokenizer: str | None = None
    batch_tokens: int | None = None
    workers: int | None = 0  # 0: this process; None or N: Ray actors
    gpus_per_worker: float | None = None
    cpus_per_worker: int | None = None
    address: str | None = None
    progress: bool | str = True  # auto | bar | log | none

    def validate(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not "
                              f"{self.method!r}")
        if self.likelihood is not None and self.likelihood not in RESCORE_LIKELIHOODS:
            raise ConfigError(f"--likelihood must be one of {', '.join(RESCORE_LIKELIHOODS)}, "
                              f"not {self.likelihood!r}")
        if self.copy not in (None, 1, 2):
            raise ConfigError(f"--copy must be 1 or 2, not {self.copy!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be an integer in [0, 2**63), not {self.seed!r}")


def probe_doubling(fasta: str | Path, *, output: str | Path | None = None,
                   format: str = "parquet", **options) -> pa.Table:
    """The doubling probe of every sequence of ``fasta`` (module docstring); one row per
    sequence and variant (:data:`seqatlas.schema.DOUBLING`), also written to ``output``
    (parquet, csv or json) when given. Options as :class:`DoublingConfig`."""
    config = DoublingConfig(**options)
    config.validate()
    path = Path(fasta)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    kind = config.kind or detect_kind(path)
    spec = resolve_model(config.model, kind=kind, tokenizer=config.tokenizer)
    config = _for_model(config, spec)
    tokenizer = spec.tokenizer()
    check_model_fit(spec, lambda letters: count_letters(
        (r.sequence for r in read_fasta(path, kind=kind)), letters), tokenizer=tokenizer)
    limit = tokenizer.residues_per_window(spec.context_tokens) // 2
    items = []
    for record in read_fasta(path, kind=kind):  # every record checked before any scoring
        if record.length > limit:
            raise InputError(
                f"{path}: record {record.id!r} (line {record.line}) has {record.length} "
                f"residues; S+S must fit the model's context of {spec.context_tokens} tokens, "
                f"so the doubling probe takes sequences of at most {limit} residues. Trim it "
                "or leave it out.")
        if record.length < 1:
            continue
        letters = standard_letters(record.sequence, tokenizer.letters)
        for variant in VARIANTS[: 2 if config.shuffle else 1]:
            residues = record.sequence if variant == "original" else \
                corrupt(record.sequence, 0, record.length, method="shuffle",
                        rng=region_rng(config.seed, "variant", record.id))[0]
            items.append(((record.id, variant, record.length),
                          _tasks(residues, config, record.id, variant, letters)))
    scoring = {"likelihood": config.likelihood, "embeddings": False,
               "layer": [spec.num_layers], "batch_tokens": config.batch_tokens,
               "strands": "forward", "copy_k": 0, "nucleic": kind != "protein"}
    rows: dict[tuple, dict] = {}
    progress = Meter(label="doubling", unit="sequences", rate_unit="seq", total=len(items),
                     progress=config.progress)

    def commit(item, result) -> None:
        (seq_id, variant, length), _ = item
        rows[(seq_id, variant)] = _row(seq_id, variant, length, result[0], config)
        progress.advance(1)

    def failed(item, error) -> None:
        raise error

    executor = make_executor(spec, scoring, workers=config.workers,
                             gpus_per_worker=config.gpus_per_worker,
                             cpus_per_worker=config.cpus_per_worker, address=config.address)
    try:
        with progress:
            run_units(executor, items, method="rescore", commit=commit, max_retries=0,
                      failed=failed)
    finally:
        executor.close()
    ordered = [rows[(seq_id, variant)] for (seq_id, variant, _), _ in items]
    table = pa.Table.from_pylist(ordered, schema=schema.DOUBLING)
    if output is not None:
        write_result(table, output, format)
    return table


def _for_model(config: DoublingConfig, spec) -> DoublingConfig:
    """``config`` with the model's defaults filled in (likelihood, method, copy), refusing
    what the model cannot do."""
    likelihood = config.likelihood or ("causal" if spec.causal else "exact")
    if (likelihood == "causal") != spec.causal:
        raise ConfigError(objective_refusal(spec, likelihood))
    method = config.method or ("shuffle" if spec.causal else "mask")
    if method == "mask" and spec.causal:
        raise ConfigError(f"{spec.name} is a causal model and has no mask token: corrupt the "
                          "partner with --method shuffle or substitute")
    return replace(config, likelihood=likelihood, method=method,
                   copy=config.copy or (2 if spec.causal else 1))


def _tasks(residues: bytes, config: DoublingConfig, seq_id: str, variant: str,
           letters: bytes) -> list[RescoreTask]:
    """The rescoring tasks of one sequence, in :data:`CONDITIONS` order (``control`` left
    out with ``mask``, where it is the ``partner`` input). Copy 2 scored: every construct
    mirrored (the partner and the control block come first)."""
    n = len(residues)
    second = config.copy == 2
    scored = np.arange(n, 2 * n, dtype=np.int64) if second else np.arange(n, dtype=np.int64)
    other = (0, n) if second else (n, 2 * n)  # where the partner or control block lies
    doubled = residues + residues
    control_block = corrupt(residues, 0, n, method="shuffle",
                            rng=region_rng(config.seed, "control-block", seq_id, variant))[0]
    with_control = control_block + residues if second else residues + control_block

    def corrupted(construct: bytes, role: str) -> RescoreTask:
        data, masked = corrupt(construct, *other, method=config.method,
                               rng=region_rng(config.seed, config.method, seq_id, variant, role),
                               composition=letters)
        return RescoreTask(data, 0, 2 * n, scored, masked)

    tasks = [RescoreTask(residues, 0, n, np.arange(n, dtype=np.int64)),
             RescoreTask(doubled, 0, 2 * n, scored),
             corrupted(doubled, "partner"), RescoreTask(with_control, 0, 2 * n, scored)]
    if config.method != "mask":
        tasks.append(corrupted(with_control, "control"))
    return tasks


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.astype(np.float64).mean()) if len(finite) else None


def _row(seq_id: str, variant: str, length: int, values: list[np.ndarray],
         config: DoublingConfig) -> dict:
    means = [_mean(v) for v in values]
    if config.method == "mask":
        means.append(means[2])
    alone, doubled, partner, control_intact, control = means

    def diff(a, b):
        return None if a is None or b is None else a - b

    icl, control_gain = diff(doubled, partner), diff(control_intact, control)
    return {"seq_id": seq_id, "variant": variant, "length": length, "method": config.method,
            "seed": config.seed, "logp_alone": alone, "logp_doubled": doubled,
            "logp_partner": partner, "logp_control_intact": control_intact,
            "logp_control": control, "icl_gain": icl, "control_gain": control_gain,
            "net_gain": diff(icl, control_gain), "doubling_gain": diff(doubled, alone),
            "scored_copy": config.copy}


def summary(table: pa.Table) -> dict:
    """Mean, minimum and maximum of each gain per variant."""
    out = {}
    for variant in VARIANTS:
        rows = [r for r in table.to_pylist() if r["variant"] == variant]
        if not rows:
            continue
        out[variant] = {}
        for gain in ("icl_gain", "control_gain", "net_gain", "doubling_gain"):
            values = [r[gain] for r in rows if r[gain] is not None and not math.isnan(r[gain])]
            out[variant][gain] = {"mean": float(np.mean(values)) if values else None,
                                  "min": min(values) if values else None,
                                  "max": max(values) if values else None}
    return out
