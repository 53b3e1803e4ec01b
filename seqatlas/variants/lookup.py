"""Rescoring variant sites: the distributions an atlas does not store, the joint score of a
multi-mutant, and look-up exposure.

**Look-up exposure** (``--lookup``) reuses ``probe icl``'s targets, controls and corruptions
(:mod:`seqatlas.probe.targets`, :mod:`seqatlas.scoring.ablation`; the same seeded draws,
so a site's values equal the ablations rows ``probe icl`` writes with the same method and
seed). For a site inside an in-context copy, in the probe's likelihood mode (the atlas's
if exact or fast, else exact), on every scored strand:

- ``llr_intact``: the LLR with the window as it is;
- ``llr_partner``: the LLR with the copy partner corrupted;
- ``llr_control``: the LLR with the matched control region corrupted the same way;
- ``icl_shift = llr_intact - llr_partner``, ``control_shift = llr_intact - llr_control``,
  ``lookup_shift = icl_shift - control_shift`` (= ``llr_control - llr_partner``): the part
  of the LLR that the partner's being readable explains, net of what corrupting any
  region of that size does;
- ``llr_corrected = llr_intact - lookup_shift``.

Every site is scored on the wild-type sequence (masked marginals), so a multi-mutant whose
sites lie in both copies has each site's partner corrupted as wild type; ``partner_mutated``
flags it. A site without a copy contributes no shift to its variant's sums (its three LLRs
are its intact LLR); a variant without any site in a copy has null look-up columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqatlas.checkpoints.recorded import atlas_model_spec, recorded_engine
from seqatlas.probe.icl import SequenceData, read_sequences, with_controls
from seqatlas.probe.targets import split_runs
from seqatlas.repeats.copies import copy_runs, read_copies, seq_order
from seqatlas.scoring.ablation import RESCORE_LIKELIHOODS, RescoreTask, corrupt, region_rng
from seqatlas.store import AtlasReader
from seqatlas.variants.rescoring import SiteTask, forward_values, owned_range, \
    rescore_sites, strand_tasks


@dataclass
class RescoreContext:
    """The atlas's model and sequences, ready to rescore sites in ``mode``."""

    reader: AtlasReader
    spec: object
    mode: str
    strands: str
    sequences: dict[str, SequenceData]
    placed: object
    sites: dict
    config: object
    complement: np.ndarray
    rna: bool

    @classmethod
    def build(cls, reader: AtlasReader, placed, sites: dict, config, *, mode: str
              ) -> RescoreContext:
        from seqatlas.scoring.scorer import complement_order

        spec = atlas_model_spec(reader, config.model)
        tokenizer = spec.tokenizer()
        needed = sorted({s for s, p in zip(placed.seq_id, placed.problem) if p is None and s})
        sequences = read_sequences(reader, needed, tokenizer.letters)
        kind = reader.manifest.kind
        return cls(reader, spec, mode, reader.manifest.scoring.strands, sequences, placed,
                   sites, config, complement_order(tokenizer) if kind != "protein"
                   else np.arange(len(tokenizer.letters)), kind == "rna")

    def scoring_args(self) -> dict:
        return {"likelihood": self.mode, "embeddings": False, "layer": [self.spec.num_layers],
                "strands": "forward", "copy_k": 0,
                "nucleic": self.reader.manifest.kind != "protein", "distributions": "float32",
                **recorded_engine(self.reader.manifest.scoring, self.mode)}

    def window(self, i: int) -> tuple[bytes, int, int, tuple[int, int]]:
        """Site ``i``'s window: residues, start, end, and the bases it owned."""
        seq = self.sequences[self.placed.seq_id[i]]
        ws, we = self.sites["window_start"][i], self.sites["window_end"][i]
        return seq.residues[ws:we], ws, we, owned_range(seq.window_start, ws, we)

    def run(self, tasks: list[RescoreTask], label: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each forward-view task's (forward, reverse) distributions of its bases, in
        forward letters (reverse NaN with one strand)."""
        site_tasks: list[SiteTask] = []
        owner = []
        for t, task in enumerate(tasks):
            for st in strand_tasks(task, strands=self.strands, rna=self.rna):
                site_tasks.append(st)
                owner.append(t)
        values, _ = rescore_sites(self.spec, self.scoring_args(), site_tasks,
                                  workers=self.config.workers,
                                  batch_tokens=self.config.batch_tokens,
                                  progress=self.config.progress, label=label)
        out = [[None, None] for _ in tasks]
        for st, t, value in zip(site_tasks, owner, values):
            out[t][0 if st.strand == "+" else 1] = forward_values(st, value, self.complement)
        return [(f, r if r is not None else np.full_like(f, np.nan)) for f, r in out]

    def intact(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (forward, reverse) distributions of sites ``indices``, one task per window."""
        by_window: dict[tuple, list[int]] = {}
        for i in indices:
            by_window.setdefault((self.placed.seq_id[i], self.sites["window_start"][i]),
                                 []).append(int(i))
        tasks, members = [], []
        for group in by_window.values():
            residues, ws, _, own = self.window(group[0])
            bases = sorted({self.placed.pos[i] - ws for i in group})
            tasks.append(RescoreTask(residues, *own, np.array(bases, dtype=np.int64)))
            members.append((group, bases))
        width = len(self.complement)
        fwd = np.full((len(indices), width), np.nan)
        rc = np.full((len(indices), width), np.nan)
        row = {int(i): k for k, i in enumerate(indices)}
        for (group, bases), (f, r) in zip(members, self.run(tasks, "rescoring sites")):
            for i in group:
                b = bases.index(self.placed.pos[i] - self.sites["window_start"][i])
                fwd[row[i]], rc[row[i]] = f[b], r[b]
        return fwd, rc


def _probe_mode(reader: AtlasReader) -> str:
    mode = reader.manifest.scoring.likelihood
    return mode if mode in RESCORE_LIKELIHOODS else "exact"


def _llrs(dist_pair, ref: int, alt: int, both: bool) -> float:
    f, r = dist_pair
    llr = f[alt] - f[ref]
    return (llr + (r[alt] - r[ref])) / 2 if both else llr


def _letter(letters: str, c: str | None) -> int:
    return letters.index(c) if c and c in letters else 0


def joint_llrs(reader, placed, sites, config, ok: np.ndarray, letters: str) -> dict:
    """``llr_joint`` per site: its LLR with every site of its variant masked at once."""
    context = RescoreContext.build(reader, placed, sites, config, mode=_probe_mode(reader))
    by_variant: dict[int, list[int]] = {}
    for i, v in enumerate(placed.variant):
        by_variant.setdefault(v, []).append(i)
    tasks, owners = [], []
    for idx in by_variant.values():
        if not all(ok[i] for i in idx):
            continue
        for i in idx:
            residues, ws, we, own = context.window(i)
            masked = tuple((placed.pos[j] - ws, placed.pos[j] - ws + 1) for j in idx
                           if placed.seq_id[j] == placed.seq_id[i] and ws <= placed.pos[j] < we)
            tasks.append(RescoreTask(residues, *own, np.array([placed.pos[i] - ws]), masked))
            owners.append(i)
    out = np.full(len(placed), np.nan)
    both = reader.manifest.scoring.strands == "both"
    for i, (f, r) in zip(owners, context.run(tasks, "joint scores") if tasks else []):
        out[i] = _llrs((f[0], r[0]), _letter(letters, placed.ref[i]),
                       _letter(letters, placed.alt[i]), both)
    return {"llr_joint": out}


def _site_targets(reader: AtlasReader, placed, sites, candidates: list[int]) -> dict:
    """Site index -> its probe icl target (with control), for sites inside a copy."""
    names = seq_order(reader)
    copies = read_copies(reader)
    targets = split_runs(copy_runs(copies, names))
    if not targets:
        return {}
    index = {n: k for k, n in enumerate(names)}
    keyed = sorted(targets, key=lambda t: (t.seq, t.start))
    starts = np.array([(t.seq << 40) + t.start for t in keyed], dtype=np.int64)
    found = {}
    for i in candidates:
        key = (index[placed.seq_id[i]] << 40) + placed.pos[i]
        k = int(np.searchsorted(starts, key, side="right")) - 1
        if k >= 0 and keyed[k].seq == index[placed.seq_id[i]] and \
                keyed[k].start <= placed.pos[i] < keyed[k].end:
            found[i] = keyed[k]
    chosen = list({id(t): t for t in found.values()}.values())
    controlled = {(t.seq, t.start): t for t in with_controls(chosen, copies, names)}
    return {i: controlled[(t.seq, t.start)] for i, t in found.items()}


def lookup_llrs(reader, placed, sites, config, ok: np.ndarray, letters: str,
                intact: tuple[np.ndarray, np.ndarray | None]) -> dict:
    """Per site: ``llr_intact``, ``llr_partner``, ``llr_control`` and ``partner_mutated``
    (module doc)."""
    mode = _probe_mode(reader)
    both = reader.manifest.scoring.strands == "both"
    n = len(placed)
    ref = np.array([_letter(letters, c) for c in placed.ref])
    alt = np.array([_letter(letters, c) for c in placed.alt])
    rows = np.arange(n)
    fwd, rc = intact
    if mode != reader.manifest.scoring.likelihood:  # every site's intact LLR in the probe's
        fwd, rc = np.full_like(fwd, np.nan), np.full_like(fwd, np.nan)  # mode, so sums
        scorable = np.flatnonzero(ok)  # never mix modes
        if len(scorable):
            context = RescoreContext.build(reader, placed, sites, config, mode=mode)
            fwd[scorable], rc[scorable] = context.intact(scorable)
    base = fwd[rows, alt] - fwd[rows, ref]
    if both:
        base = (base + rc[rows, alt] - rc[rows, ref]) / 2
    out = {"llr_intact": base.copy(), "llr_partner": base.copy(),
           "llr_control": base.copy(), "partner_mutated": np.zeros(n, dtype=bool),
           "has_lookup": np.zeros(n, dtype=bool)}
    candidates = [i for i in range(n) if ok[i] and sites["copy_offset"][i] is not None]
    targets = _site_targets(reader, placed, sites, candidates) if candidates else {}
    if not targets:
        return out
    context = RescoreContext.build(reader, placed, sites, config, mode=mode)
    tasks, owners = [], []
    for i, t in targets.items():
        seq_id = placed.seq_id[i]
        residues, ws, we, own = context.window(i)
        composition = context.sequences[seq_id].composition
        base_local = np.array([placed.pos[i] - ws], dtype=np.int64)
        roles = [("intact", None, None), ("partner", t.partner_start, t.partner_end)]
        if t.control_start is not None:
            roles.append(("control", t.control_start, t.control_end))
        for role, lo, hi in roles:
            if role == "intact":
                tasks.append(RescoreTask(residues, *own, base_local))
            else:
                rng = region_rng(config.seed, config.method, seq_id, lo, hi, role)
                changed, masked = corrupt(residues, lo - ws, hi - ws, method=config.method,
                                          rng=rng, composition=composition)
                tasks.append(RescoreTask(changed, *own, base_local, masked))
            owners.append((i, role))
        others = [j for j, v in enumerate(placed.variant)
                  if v == placed.variant[i] and j != i and placed.seq_id[j] == seq_id]
        out["partner_mutated"][i] = any(t.partner_start <= placed.pos[j] < t.partner_end
                                        for j in others)
    out["has_lookup"][list(targets)] = True
    out["llr_control"][list(targets)] = np.nan  # until a control is scored
    for (i, role), (f, r) in zip(owners, context.run(tasks, "look-up rescoring")):
        out[f"llr_{role}"][i] = _llrs((f[0], r[0]), ref[i], alt[i], both)
    return out
