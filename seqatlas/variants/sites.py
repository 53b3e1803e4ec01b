"""Variant records placed on the atlas: each site's sequence and 0-based position, checked
against the atlas's reference, or the reason it cannot be scored.

Coordinates: a mutant's number and a VCF ``POS`` are 1-based; ``--offset N`` says the
input numbers residues from N + 1, so the atlas position is ``number - offset - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from seqatlas.errors import ConfigError
from seqatlas.variants.formats import VariantRecord, match_seq_ids


@dataclass
class PlacedSites:
    """One entry per site of every variant (a variant without a readable site has one
    entry with position None), in input order."""

    variant: list[int] = field(default_factory=list)  # index into the records
    seq_id: list[str | None] = field(default_factory=list)  # the atlas's id
    pos: list[int | None] = field(default_factory=list)  # 0-based, in the atlas
    input_position: list[int | None] = field(default_factory=list)
    ref: list[str | None] = field(default_factory=list)
    alt: list[str | None] = field(default_factory=list)
    problem: list[str | None] = field(default_factory=list)

    def add(self, variant: int, seq_id, pos, input_position, ref, alt, problem) -> None:
        self.variant.append(variant)
        self.seq_id.append(seq_id)
        self.pos.append(pos)
        self.input_position.append(input_position)
        self.ref.append(ref)
        self.alt.append(alt)
        self.problem.append(problem)

    def __len__(self) -> int:
        return len(self.variant)


def place(records: list[VariantRecord], *, atlas_ids: list[str], lengths: dict[str, int],
          seq_id: str | None, offset: int, chrom_map: dict[str, str] | None
          ) -> PlacedSites:
    """Each record's sites on the atlas (sequence, 0-based position), with the problems
    found without reading positions: unknown sequence, outside it, a problem the reader
    already found."""
    names = sorted({r.seq_id for r in records if r.seq_id is not None})
    matched = match_seq_ids(names, atlas_ids, chrom_map=chrom_map) if names else {}
    default = _default_seq_id(records, atlas_ids, seq_id)
    placed = PlacedSites()
    for v, record in enumerate(records):
        target = default if record.seq_id is None else matched.get(record.seq_id)
        problem = record.problem or _sequence_problem(record, target, atlas_ids)
        if not record.sites:
            placed.add(v, target, None, None, None, None, problem or "no site")
            continue
        for site in record.sites:
            pos = site.position - offset - 1
            site_problem = problem or _site_problem(site, pos, lengths.get(target), offset)
            placed.add(v, target, pos, site.position, site.ref, site.alt, site_problem)
    return placed


def _default_seq_id(records, atlas_ids: list[str], seq_id: str | None) -> str | None:
    """The sequence of records that name none: ``--seq-id``, else the atlas's only one."""
    if seq_id is not None:
        if seq_id not in atlas_ids:
            shown = ", ".join(atlas_ids[:5]) + (" ..." if len(atlas_ids) > 5 else "")
            raise ConfigError(f"--seq-id {seq_id!r} is not a sequence of the atlas ({shown})")
        return seq_id
    if any(r.seq_id is None for r in records):
        if len(atlas_ids) == 1:
            return atlas_ids[0]
        raise ConfigError("the variants name no sequence and the atlas holds "
                          f"{len(atlas_ids)}: pass --seq-id ID (or a seq_id column)")
    return None


def _sequence_problem(record: VariantRecord, target: str | None, atlas_ids) -> str | None:
    if target is None:
        return f"sequence {record.seq_id!r} is not in the atlas"
    return None


def _site_problem(site, pos: int, length: int | None, offset: int) -> str | None:
    if length is None:
        return None  # the sequence problem says it
    if not 0 <= pos < length:
        shift = f" with --offset {offset}" if offset else ""
        return (f"position {site.position}{shift} is outside the sequence (atlas positions "
                f"1-{length} in 1-based numbering)")
    return None


def letter_problem(ref: str, alt: str, letters: str) -> str | None:
    """Why a substitution ``ref`` -> ``alt`` has no LLR: a letter outside the ``letters``
    the distribution is over (checked once ``ref`` is known to be the atlas's)."""
    for role, letter in (("ref", ref), ("alt", alt)):
        if letter not in letters:
            return (f"{role} {letter} is not one of the standard letters {letters} the "
                    "distribution is over")
    return None
