"""``variants score`` against the model run by hand: every tokenizer family and strand, the
three likelihood modes, distributions rescored on demand, batch independence, look-up
exposure, multi-mutants, problems, sequence names and offsets."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

import seqatlas
from seqatlas import schema
from seqatlas.probe import probe_icl
from seqatlas.scoring.ablation import corrupt, region_rng, standard_letters
from seqatlas.variants.score import score_variants
from tests.conftest import AMINO, make_esm, random_protein, write_fasta
from tests.dna_models import make_bpe, make_nonoverlapping, make_overlapping, make_single
from tests.variant_data import DNA, FAMILIES, Reference, random_dna, reverse_complement, write_vcf

COMMON = {"workers": 0, "progress": False}
# random tiny checkpoints know nothing: ingest says so
pytestmark = pytest.mark.filterwarnings("ignore:model .* may be out of domain:UserWarning")
LLR_COLUMNS = ("llr", "llr_fwd", "llr_rc", "p_alt", "p_ref")
MODELS = {
    "single": lambda d: make_single(d, context_tokens=48),
    "overlapping_kmer": lambda d: make_overlapping(d, k=3, context_tokens=48),
    "nonoverlapping_kmer": lambda d: make_nonoverlapping(d, k=3, context_tokens=40),
    "bpe": lambda d: make_bpe(d, context_tokens=48),
}


@pytest.fixture(scope="module")
def dna_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("variant_models")
    return {family: make(base / family) for family, make in MODELS.items()}


@pytest.fixture(scope="module")
def references(dna_models, tiny_esm):
    """One :class:`Reference` per checkpoint, loaded on first use."""
    cache = {}

    def get(family):
        if family not in cache:
            directory = tiny_esm if family == "protein" else dna_models[family]
            cache[family] = Reference(directory, family)
        return cache[family]

    return get


def _ingest(directory, model, records: dict[str, str], name: str, *, kind: str, **options):
    fasta = write_fasta(directory / f"{name}.fa", records)
    seqatlas.ingest(fasta, atlas=directory / name, model=str(model), kind=kind,
                    embeddings=False, **{**COMMON, **options})
    return directory / name


def _positions(atlas) -> dict[tuple[str, int], dict]:
    return {(r["seq_id"], r["pos"]): r for r in seqatlas.Atlas(atlas).positions().to_pylist()}


def _window(seqs: dict[str, str], row: dict) -> tuple[str, int]:
    """A positions row's window residues and the row's base inside it."""
    ws, we = row["window_start"], row["window_end"]
    return seqs[row["seq_id"]][ws:we], row["pos"] - ws


def _expect_llrs(got: dict, want: tuple[float, float, float], *, abs_=1e-5) -> None:
    f, b, mean = want
    assert got["llr_fwd"] == pytest.approx(f, abs=abs_), got
    if math.isnan(b):
        assert got["llr_rc"] is None, got
    else:
        assert got["llr_rc"] == pytest.approx(b, abs=abs_), got
    assert got["llr"] == pytest.approx(mean, abs=abs_), got


def _snvs(seq: str, positions, *, letters=DNA) -> list[tuple[int, str, str]]:
    """(0-based pos, ref, alt) for every alternate letter at ``positions``."""
    return [(p, seq[p], a) for p in positions for a in letters if a != seq[p]]


def _by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    out = {r["variant_id"]: r for r in rows}
    assert len(out) == len(rows)
    return out


# ---------------------------------------------------------------------------------------------
# 1. brute force, per tokenizer family


@pytest.mark.parametrize("family", FAMILIES)
def test_dna_snvs_equal_the_model_run_by_hand_on_both_strands(tmp_path, dna_models, references,
                                                             family):
    seq = random_dna(40, seed=21)
    atlas = _ingest(tmp_path, dna_models[family], {"s": seq}, "a", kind="dna",
                    likelihood="exact", strands="both")
    rows = _positions(atlas)
    assert rows[("s", 0)]["window_start"] == 0 and rows[("s", 0)]["window_end"] == 40
    snvs = _snvs(seq, (0, 1, 2, 17, 37, 38, 39))
    vcf = write_vcf(tmp_path / "v.vcf", [("s", p + 1, r, a) for p, r, a in snvs])
    result = score_variants(vcf, atlas=atlas, **COMMON)
    assert result.table.schema.equals(schema.VARIANT_SCORES)
    assert result.table.num_rows == len(snvs)
    assert result.sites_rescored == 0
    reference = references(family)
    checked = 0
    for got, (p, r, a) in zip(result.table.to_pylist(), snvs):
        assert (got["pos"], got["input_position"], got["ref"], got["alt"], got["atlas_ref"]) \
            == (p, p + 1, r, a, r)
        assert got["variant_id"] == f"s:{p + 1}:{r}>{a}"
        dists = reference.strands(*_window({"s": seq}, rows[("s", p)]))
        if not all(np.isfinite(d[DNA.index(a)]) for d in dists):
            # no vocabulary token of that length holds it (BPE): a row that says so
            assert got["llr"] is None and "no probability" in got["problem"]
            continue
        checked += 1
        assert got["problem"] is None and got["distribution"] == "stored"
        _expect_llrs(got, reference.llr(dists, r, a))
        probs = (np.exp(dists[0]) + np.exp(dists[1])) / 2
        assert got["p_alt"] == pytest.approx(probs[DNA.index(a)], abs=1e-5)
        assert got["p_ref"] == pytest.approx(probs[DNA.index(r)], abs=1e-5)
        assert got["rank_alt"] == 1 + int((probs > probs[DNA.index(a)] + 1e-6).sum())
    assert checked >= len(snvs) // 2 and result.scored == checked


@pytest.fixture(scope="module")
def protein(tmp_path_factory, tiny_esm):
    """A 25-residue protein in one window of the tiny ESM, exact mode: (atlas, sequence)."""
    seq = random_protein(25, seed=31)
    directory = tmp_path_factory.mktemp("protein_atlas")
    return _ingest(directory, tiny_esm, {"p": seq}, "a", kind="protein",
                   likelihood="exact"), seq


def test_protein_substitutions_equal_the_model_run_by_hand(protein, references):
    atlas, seq = protein
    rows = _positions(atlas)
    assert rows[("p", 0)]["window_start"] == 0 and rows[("p", 0)]["window_end"] == 25
    rng = random.Random(1)
    sites = [(p, seq[p], a) for p in (0, 1, 12, 23, 24)
             for a in rng.sample([c for c in AMINO if c != seq[p]], 3)]
    mutants = [f"{r}{p + 1}{a}" for p, r, a in sites]
    result = score_variants(mutants, atlas=atlas, **COMMON)
    assert result.table.num_rows == len(mutants) == result.scored
    reference = references("protein")
    for got, (p, r, a), mutant in zip(result.table.to_pylist(), sites, mutants):
        assert got["variant_id"] == mutant and (got["pos"], got["atlas_ref"]) == (p, r)
        assert got["line"] is None and got["source"] == "<arguments>"
        dists = reference.strands(*_window({"p": seq}, rows[("p", p)]), both=False)
        _expect_llrs(got, reference.llr(dists, r, a))
        assert got["llr"] == got["llr_fwd"] and got["llr_rc"] is None
        assert got["p_alt"] == pytest.approx(math.exp(dists[0][AMINO.index(a)]), abs=1e-6)
        assert got["entropy"] == pytest.approx(rows[("p", p)]["entropy"], abs=1e-6)


@pytest.fixture(scope="module")
def unspellable(references):
    """Substitutions in the first half of a random sequence whose ALT no BPE token of the
    masked token's length spells at that offset, on some strand: (sequence, sites)."""
    seq = random_dna(40, seed=21)
    reference = references("bpe")
    sites = []
    for p in range(20):
        dists = reference.strands(seq, p)
        sites += [(p, seq[p], a) for a in DNA
                  if a != seq[p] and not all(np.isfinite(d[DNA.index(a)]) for d in dists)]
    assert sites
    return seq, sites


@pytest.mark.parametrize("distributions", [
    "float32", "float16", "none"])
def test_a_letter_the_model_cannot_spell_is_a_problem(tmp_path, dna_models, unspellable,
                                                       distributions):
    """BPE: the masked token's candidates (vocabulary words of its length) may hold no word
    with that letter at that offset: p = 0, the row is a problem, never a huge LLR."""
    seq, impossible = unspellable
    atlas = _ingest(tmp_path, dna_models["bpe"], {"s": seq}, "a", kind="dna",
                    likelihood="exact", strands="both", distributions=distributions)
    vcf = write_vcf(tmp_path / "v.vcf", [("s", p + 1, r, a) for p, r, a in impossible])
    result = score_variants(vcf, atlas=atlas, **COMMON)
    assert result.table.num_rows == len(impossible)
    for got in result.table.to_pylist():
        assert got["problem"] is not None and "no probability" in got["problem"], got
        assert got["llr"] is None and got["llr_fwd"] is None
    assert result.problems == {"no probability": len(impossible)} and result.scored == 0


# ---------------------------------------------------------------------------------------------
# 2. unmasked and fast modes


def _stored_letters(atlas, seq_id: str, pos: int, column: str = "letter_logp") -> np.ndarray:
    table = seqatlas.Atlas(atlas).sql(
        f"SELECT {column} AS d FROM positions WHERE seq_id = '{seq_id}' AND pos = {pos}")
    return np.array(table["d"][0].as_py(), dtype=np.float64)


def _check_logp_columns(atlas, letters: str, *, main: str, both: bool) -> None:
    """letter_logp[ref] is the stored likelihood (and letter_logp_rc[ref] the reverse's)."""
    pairs = [("letter_logp", main)] + ([("letter_logp_rc", main + "_rc")] if both else [])
    for column, logp in pairs:
        table = seqatlas.Atlas(atlas).sql(
            f"SELECT count(*) AS n, count(*) FILTER (WHERE abs({column}[strpos('{letters}', "
            f"ref)] - {logp}) < 1e-6) AS same FROM positions WHERE {logp} IS NOT NULL")
        assert table["n"][0].as_py() > 0
        assert table["same"][0].as_py() == table["n"][0].as_py(), (column, logp)
    if not both:
        nulls = seqatlas.Atlas(atlas).sql(
            "SELECT count(*) AS n FROM positions WHERE letter_logp_rc IS NOT NULL")
        assert nulls["n"][0].as_py() == 0


@pytest.mark.parametrize("family", ["overlapping_kmer", "nonoverlapping_kmer", "protein"])
def test_unmasked_mode_reads_the_window_unmasked(tmp_path, dna_models, tiny_esm, references,
                                                 family):
    protein = family == "protein"
    seq = random_protein(25, seed=8) if protein else random_dna(40, seed=8)
    letters = AMINO if protein else DNA
    model = tiny_esm if protein else dna_models[family]
    atlas = _ingest(tmp_path, model, {"s": seq}, "a", kind="protein" if protein else "dna",
                    likelihood="unmasked", **({} if protein else {"strands": "both"}))
    _check_logp_columns(atlas, letters, main="logp_unmasked", both=not protein)
    snvs = [(p, seq[p], a) for p in (0, 5, len(seq) - 1)
            for a in random.Random(p).sample([c for c in letters if c != seq[p]], 3)]
    result = score_variants([f"{r}{p + 1}{a}" for p, r, a in snvs], atlas=atlas, **COMMON)
    reference = references(family)
    rows = _positions(atlas)
    for got, (p, r, a) in zip(result.table.to_pylist(), snvs):
        window, base = _window({"s": seq}, rows[("s", p)])
        _expect_llrs(got, reference.llr(reference.strands(window, base, unmasked=True,
                                                          both=not protein), r, a))


def _fast_companions(rows: dict, seq_id: str, pos: int, stride: int) -> list[int]:
    """Window-local bases that fast mode masks with ``pos`` (single residue and overlapping
    k-mer tokens: each base its own mask unit, the window's owned units dealt round-robin
    into ``stride`` passes)."""
    ws = rows[(seq_id, pos)]["window_start"]
    owned = sorted(p for (s, p), r in rows.items() if s == seq_id and r["window_start"] == ws)
    first = owned[0]
    return [p - ws for p in owned if p != pos and (p - first) % stride == (pos - first) % stride]


@pytest.mark.parametrize("family", ["overlapping_kmer", "protein"])
def test_fast_mode_equals_its_passes_run_by_hand_and_the_stored_distributions(
        tmp_path, dna_models, tiny_esm, references, family):
    protein = family == "protein"
    seq = random_protein(30, seed=5) if protein else random_dna(40, seed=5)
    letters = AMINO if protein else DNA
    model = tiny_esm if protein else dna_models[family]
    atlas = _ingest(tmp_path, model, {"s": seq}, "a", kind="protein" if protein else "dna",
                    likelihood="fast", **({} if protein else {"strands": "both"}))
    stride = seqatlas.Atlas(atlas).manifest["scoring"]["fast"]["stride"]
    assert stride == (7 if protein else 10)  # 3-mers: every (3/0.3)th base
    _check_logp_columns(atlas, letters, main="logp", both=not protein)
    positions = (0, 1, 8, 20, len(seq) - 1)
    snvs = [(p, seq[p], a) for p in positions
            for a in random.Random(p).sample([c for c in letters if c != seq[p]], 3)]
    result = score_variants([f"{r}{p + 1}{a}" for p, r, a in snvs], atlas=atlas, **COMMON)
    assert result.sites_rescored == 0
    reference = references(family)
    rows = _positions(atlas)
    for got, (p, r, a) in zip(result.table.to_pylist(), snvs):
        window, base = _window({"s": seq}, rows[("s", p)])
        dists = reference.strands(window, base, also=_fast_companions(rows, "s", p, stride),
                                  both=not protein)
        _expect_llrs(got, reference.llr(dists, r, a))
        fwd = _stored_letters(atlas, "s", p)
        assert got["llr_fwd"] == pytest.approx(fwd[letters.index(a)] - fwd[letters.index(r)],
                                               abs=1e-6)
        if not protein:
            rc = _stored_letters(atlas, "s", p, "letter_logp_rc")
            assert got["llr_rc"] == pytest.approx(rc[letters.index(a)] - rc[letters.index(r)],
                                                  abs=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. distributions rescored on demand equal the stored ones


def _compare_tables(stored: pa.Table, rescored: pa.Table, *, tol: float = 1e-5) -> None:
    assert stored.num_rows == rescored.num_rows
    for column in stored.column_names:
        a, b = stored[column].to_pylist(), rescored[column].to_pylist()
        if column in LLR_COLUMNS:
            for x, y in zip(a, b):
                assert (x is None) == (y is None), column
                if x is not None:
                    assert x == pytest.approx(y, abs=tol), column
        elif column == "distribution":
            assert {v for v in a} == {"stored", None} and {v for v in b} == {"rescored", None}
            assert [v is None for v in a] == [v is None for v in b]
        else:  # what the positions hold (entropy, z, copies) and the inputs
            assert a == b, column


@pytest.mark.parametrize("family, mode", [
    (family, mode) for family in ("overlapping_kmer", "nonoverlapping_kmer", "protein")
    for mode in ("exact", "fast", "unmasked")] + [("bpe", "exact"), ("single", "fast")])
def test_rescored_distributions_equal_the_stored_ones(tmp_path, dna_models, tiny_esm, family,
                                                      mode):
    """Sequences of several windows, so each site is rescored in the window that owned it."""
    protein = family == "protein"
    if protein:
        one = random_protein(70, seed=2)
        records = {"p1": one[:20] + one[20:32].lower() + "X" + one[33:],
                   "p2": random_protein(41, seed=3)}
    else:
        one = random_dna(130, seed=2)
        records = {"d1": one[:30] + one[30:46].lower() + one[46:60] + "N" + one[61:],
                   "d2": random_dna(61, seed=3)}
    letters = AMINO if protein else DNA
    options = {"kind": "protein" if protein else "dna", "likelihood": mode,
               **({} if protein else {"strands": "both"})}
    model = tiny_esm if protein else dna_models[family]
    full = _ingest(tmp_path, model, records, "full", **options)
    bare = _ingest(tmp_path, model, records, "bare", distributions="none", **options)
    assert "letter_logp" in seqatlas.Atlas(full).positions().column_names
    assert "letter_logp" not in seqatlas.Atlas(bare).positions().column_names
    windows = {r["window_start"] for r in _positions(full).values()}
    assert len(windows) > 2
    rng = random.Random(7)
    records_vcf = [(name, p + 1, seq[p].upper(),
                    rng.choice([c for c in letters if c != seq[p].upper()]))
                   for name, seq in records.items() for p in range(0, len(seq), 2)]
    if protein:
        variants = [f"{r}{p}{a}" for name, p, r, a in records_vcf if name == "p1"]
        options = {"seq_id": "p1"}
    else:
        variants, options = write_vcf(tmp_path / "v.vcf", records_vcf), {}
    stored = score_variants(variants, atlas=full, **options, **COMMON)
    rescored = score_variants(variants, atlas=bare, **options, **COMMON)
    assert stored.sites_rescored == 0
    assert rescored.sites_rescored == stored.table.num_rows - 1
    if family == "bpe":  # letters no token spells: see test_a_letter_the_model_cannot_spell
        keep = [i for i, r in enumerate(rescored.table["problem"].to_pylist())
                if r is None or "no probability" not in r]
        stored, rescored = (r.table.take(keep) for r in (stored, rescored))
    else:
        assert stored.problems == rescored.problems == {"not a standard letter": 1}  # N, X
        stored, rescored = stored.table, rescored.table
    _compare_tables(stored, rescored)


# ---------------------------------------------------------------------------------------------
# 4. a site's values do not depend on what it is scored with


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_a_variant_scores_the_same_alone_and_among_many(tmp_path, dna_models, mode):
    """Rescored sites: alone, among many of several windows and sequences of other lengths
    (padded together), and with a token budget of about two passes per batch."""
    records = {"a": random_dna(100, seed=4), "b": random_dna(45, seed=5),
               "c": random_dna(70, seed=6)}
    atlas = _ingest(tmp_path, dna_models["overlapping_kmer"], records, "bare", kind="dna",
                    likelihood=mode, strands="both", distributions="none")
    rng = random.Random(3)
    every = [(name, p + 1, seq[p], rng.choice([c for c in DNA if c != seq[p]]))
             for name, seq in records.items() for p in range(len(seq)) if rng.random() < 0.12]
    vcf = write_vcf(tmp_path / "many.vcf", every)
    many = score_variants(vcf, atlas=atlas, **COMMON)
    small = score_variants(vcf, atlas=atlas, batch_tokens=110, **COMMON)
    assert many.sites_rescored == len(every) > 12
    together = {r["variant_id"]: r for r in many.table.to_pylist()}
    for i in rng.sample(range(len(every)), 3):
        alone = score_variants(write_vcf(tmp_path / "one.vcf", [every[i]]), atlas=atlas,
                               **COMMON).table.to_pylist()[0]
        for column in ("llr", "llr_fwd", "llr_rc"):
            assert alone[column] == pytest.approx(together[alone["variant_id"]][column],
                                                  abs=1e-6)
    for a, b in zip(many.table.to_pylist(), small.table.to_pylist()):
        for column in ("llr", "llr_fwd", "llr_rc"):
            assert a[column] == pytest.approx(b[column], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# 5. look-up exposure


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """A protein with an exact direct repeat in one window of a tiny ESM, probed with probe
    icl (mask, seed 0; shuffle, seed 3): (atlas, sequence, model)."""
    directory = tmp_path_factory.mktemp("lookup")
    model = make_esm(directory / "esm62", context_tokens=62, seed=3)
    rng = random.Random(11)

    def rnd(n):
        return "".join(rng.choice(AMINO) for _ in range(n))

    motif = rnd(9)
    seq = rnd(5) + motif + rnd(5) + motif + rnd(30)
    atlas = _ingest(directory, model, {"p": seq}, "a", kind="protein", likelihood="exact")
    probe_icl(atlas, method="mask", **COMMON)
    probe_icl(atlas, method="shuffle", seed=3, **COMMON)
    return atlas, seq, model


@pytest.fixture(scope="module")
def copies_reference(copies):
    return Reference(copies[2], "protein")


def _ablations(atlas, method: str, seed: int) -> dict[int, dict]:
    table = seqatlas.Atlas(atlas).sql(
        f"SELECT * FROM ablations WHERE method = '{method}' AND seed = {seed}")
    return {r["pos"]: r for r in table.to_pylist()}


def test_lookup_llrs_equal_the_model_run_by_hand_and_probe_icl(copies, copies_reference):
    atlas, seq, model = copies
    reference = copies_reference
    ablations = _ablations(atlas, "mask", 0)
    in_copy = sorted(ablations)
    assert len(in_copy) >= 6 and all(ablations[p]["control_start"] is not None
                                     for p in in_copy)
    outside = [p for p in range(len(seq)) if p not in in_copy][-3:]
    sites = [(p, seq[p], random.Random(p).choice([c for c in AMINO if c != seq[p]]))
             for p in in_copy + outside]
    result = score_variants([f"{r}{p + 1}{a}" for p, r, a in sites], atlas=atlas,
                            lookup=True, method="mask", **COMMON)
    for got, (p, r, a) in zip(result.table.to_pylist(), sites):
        assert got["problem"] is None
        if p not in ablations:
            assert got["in_copy"] is False and got["copy_offset"] is None
            assert got["llr"] is not None
            assert all(got[c] is None for c in ("llr_intact", "llr_partner", "llr_control",
                                                "icl_shift", "control_shift", "lookup_shift",
                                                "llr_corrected")), got
            continue
        row = ablations[p]
        assert got["in_copy"] is True and got["copy_offset"] is not None
        ws, we = row["window_start"], row["window_end"]
        window, base = seq[ws:we], p - ws
        assert not row["partner_start"] <= p < row["partner_end"]
        assert row["partner_start"] <= p + got["copy_offset"] < row["partner_end"]
        d_intact = reference.distribution(window, base)
        d_partner = reference.distribution(
            window, base, masked_regions=[(row["partner_start"] - ws, row["partner_end"] - ws)])
        d_control = reference.distribution(
            window, base, masked_regions=[(row["control_start"] - ws, row["control_end"] - ws)])
        i, j = AMINO.index(r), AMINO.index(a)
        assert got["llr_intact"] == pytest.approx(d_intact[j] - d_intact[i], abs=1e-5)
        assert got["llr_intact"] == pytest.approx(got["llr"], abs=1e-6)
        assert got["llr_partner"] == pytest.approx(d_partner[j] - d_partner[i], abs=1e-5)
        assert got["llr_control"] == pytest.approx(d_control[j] - d_control[i], abs=1e-5)
        # the same rescoring as probe icl's: log p(ref) with the partner / control masked
        assert d_intact[i] == pytest.approx(row["logp_intact"], abs=1e-5)
        assert d_partner[i] == pytest.approx(row["logp_partner"], abs=1e-5)
        assert d_control[i] == pytest.approx(row["logp_control"], abs=1e-5)
        assert got["icl_gain"] == pytest.approx(row["icl_gain"], abs=1e-6)
        # the shifts
        assert got["icl_shift"] == pytest.approx(got["llr_intact"] - got["llr_partner"],
                                                 abs=1e-9)
        assert got["control_shift"] == pytest.approx(got["llr_intact"] - got["llr_control"],
                                                     abs=1e-9)
        assert got["lookup_shift"] == pytest.approx(got["llr_control"] - got["llr_partner"],
                                                    abs=1e-9)
        assert got["llr_corrected"] == pytest.approx(got["llr_intact"] - got["lookup_shift"],
                                                     abs=1e-9)
        assert got["partner_mutated"] is False


def test_lookup_of_a_multi_mutant_sums_its_sites(copies):
    atlas, seq, _ = copies
    ablations = _ablations(atlas, "mask", 0)
    target = max(ablations)  # in the second copy
    partner = ablations[target]["partner_start"]
    free = len(seq) - 2
    assert free not in ablations

    def mutant(p):
        return f"{seq[p]}{p + 1}{'W' if seq[p] != 'W' else 'A'}"

    singles = _by_id(score_variants([mutant(target), mutant(free), mutant(partner)],
                                    atlas=atlas, lookup=True, **COMMON).table)
    pair, both = (score_variants(v, atlas=atlas, lookup=True, **COMMON).table.to_pylist()[0]
                  for v in ([f"{mutant(target)}:{mutant(free)}"],
                            [f"{mutant(target)}:{mutant(partner)}"]))
    t, f = singles[mutant(target)], singles[mutant(free)]
    # a site without a copy adds its intact LLR to each of the three
    for column in ("llr", "llr_intact", "llr_partner", "llr_control"):
        assert pair[column] == pytest.approx(t[column] + f["llr"], abs=1e-6), column
    assert pair["lookup_shift"] == pytest.approx(t["lookup_shift"], abs=1e-6)
    assert pair["in_copy"] is True and pair["partner_mutated"] is False
    # both sites in the repeat, one in the other's partner: flagged
    assert both["partner_mutated"] is True
    assert both["llr_partner"] == pytest.approx(
        t["llr_partner"] + singles[mutant(partner)]["llr_partner"], abs=1e-6)


def test_lookup_with_shuffle_is_seeded_and_equals_the_shuffled_window(copies, copies_reference):
    atlas, seq, model = copies
    reference = copies_reference
    ablations = _ablations(atlas, "shuffle", 3)
    sites = sorted(ablations)[-3:]
    mutants = [f"{seq[p]}{p + 1}{'W' if seq[p] != 'W' else 'A'}" for p in sites]
    first, again, other = (score_variants(mutants, atlas=atlas, lookup=True, method="shuffle",
                                          seed=seed, **COMMON).table.to_pylist()
                           for seed in (3, 3, 4))
    assert [r["llr_partner"] for r in first] == [r["llr_partner"] for r in again]
    assert [r["llr_control"] for r in first] == [r["llr_control"] for r in again]
    assert [r["llr_partner"] for r in first] != [r["llr_partner"] for r in other]
    composition = standard_letters(seq.encode(), AMINO)
    for got, p in zip(first, sites):
        row = ablations[p]
        ws, we = row["window_start"], row["window_end"]
        i, j = AMINO.index(got["ref"]), AMINO.index(got["alt"])
        for role in ("partner", "control"):
            lo, hi = row[f"{role}_start"], row[f"{role}_end"]
            changed, masked = corrupt(seq[ws:we].encode(), lo - ws, hi - ws, method="shuffle",
                                      rng=region_rng(3, "shuffle", "p", lo, hi, role),
                                      composition=composition)
            assert not masked and changed != seq[ws:we].encode()
            d = reference.distribution(changed.decode(), p - ws)
            assert got[f"llr_{role}"] == pytest.approx(d[j] - d[i], abs=1e-5), role
            assert d[i] == pytest.approx(row[f"logp_{role}"], abs=1e-5), role


def test_lookup_on_both_dna_strands_masks_the_mirrored_partner(tmp_path):
    """A direct repeat and a hairpin (reverse-complement copy), both strands scored."""
    model = make_single(tmp_path / "single80", context_tokens=80)
    rng = random.Random(5)

    def rnd(n):
        return "".join(rng.choice(DNA) for _ in range(n))

    motif, stem = rnd(14), rnd(14)
    seq = rnd(4) + motif + rnd(4) + motif + rnd(6) + stem + rnd(5) + \
        reverse_complement(stem) + rnd(15)
    atlas = _ingest(tmp_path, model, {"s": seq}, "a", kind="dna", likelihood="exact",
                    strands="both")
    probe_icl(atlas, method="mask", **COMMON)
    ablations = _ablations(atlas, "mask", 0)
    assert {r["copy_strand"] for r in ablations.values()} == {"+", "-"}
    sites = [p for p in sorted(ablations) if ablations[p]["control_start"] is not None]
    assert len(sites) >= 8
    sites = sites[:2] + [p for p in sites if ablations[p]["copy_strand"] == "-"][:2]
    snvs = [(p, seq[p], a) for p in sites for a in DNA if a != seq[p]]
    vcf = write_vcf(tmp_path / "v.vcf", [("s", p + 1, r, a) for p, r, a in snvs])
    result = score_variants(vcf, atlas=atlas, lookup=True, **COMMON)
    reference = Reference(model, "single")
    for got, (p, r, a) in zip(result.table.to_pylist(), snvs):
        row = ablations[p]
        ws, we = row["window_start"], row["window_end"]
        for role in ("intact", "partner", "control"):
            regions = [] if role == "intact" else \
                [(row[f"{role}_start"] - ws, row[f"{role}_end"] - ws)]
            dists = reference.strands(seq[ws:we], p - ws, masked_regions=regions)
            assert got[f"llr_{role}"] == pytest.approx(reference.llr(dists, r, a)[2],
                                                       abs=1e-5), role
            assert dists[0][DNA.index(r)] == pytest.approx(row[f"logp_{role}"], abs=1e-5)
        assert got["llr_intact"] == pytest.approx(got["llr"], abs=1e-6)
        assert got["copy_strand"] == row["copy_strand"]


def test_lookup_without_a_control_region_has_null_control_and_shifts(tmp_path, tiny_esm):
    """A tandem repeat filling the window leaves no admissible control region."""
    rng = random.Random(2)
    motif = "".join(rng.choice(AMINO) for _ in range(12))
    seq = "".join(rng.choice(AMINO) for _ in range(2)) + motif + motif + "KW"
    atlas = _ingest(tmp_path, tiny_esm, {"p": seq}, "a", kind="protein", likelihood="exact")
    probe_icl(atlas, method="mask", **COMMON)
    ablations = _ablations(atlas, "mask", 0)
    assert ablations and all(r["control_rule"] == "none" for r in ablations.values())
    site = min(ablations)
    got = score_variants([f"{seq[site]}{site + 1}{_other_amino(seq[site])}"], atlas=atlas,
                         lookup=True, **COMMON).table.to_pylist()[0]
    assert got["llr_intact"] is not None and got["llr_partner"] is not None
    assert got["icl_shift"] == pytest.approx(got["llr_intact"] - got["llr_partner"], abs=1e-9)
    for column in ("llr_control", "control_shift", "lookup_shift", "llr_corrected"):
        assert got[column] is None, column


# ---------------------------------------------------------------------------------------------
# 6. multi-mutants


def test_multi_mutant_sums_sites_and_joint_masks_them_together(protein, references):
    atlas, seq = protein
    reference = references("protein")
    a, b = f"{seq[4]}5C", f"{seq[8]}9W"
    assert seq[4] != "C" and seq[8] != "W"
    result = score_variants([a, b, f"{a}:{b}"], atlas=atlas, joint=True, **COMMON)
    rows = _by_id(result.table)
    multi = rows[f"{a}:{b}"]
    assert multi["n_sites"] == 2 and multi["pos"] is None and multi["ref"] is None
    for column in ("llr", "llr_fwd"):
        assert multi[column] == pytest.approx(rows[a][column] + rows[b][column], abs=1e-9)
    assert multi["llr_rc"] is None
    joint = []
    for p, other, alt in ((4, 8, "C"), (8, 4, "W")):
        d = reference.distribution(seq, p, also=[other])
        joint.append(d[AMINO.index(alt)] - d[AMINO.index(seq[p])])
    assert multi["llr_joint"] == pytest.approx(sum(joint), abs=1e-5)
    assert multi["llr_joint"] != pytest.approx(multi["llr"], abs=1e-6)
    for single in (a, b):  # one site: joint is the site's own masked LLR
        assert rows[single]["llr_joint"] == pytest.approx(rows[single]["llr"], abs=1e-5)
    per_site = score_variants([a, f"{a}:{b}"], atlas=atlas, joint=True, per_site=True,
                              **COMMON).table.to_pylist()
    assert [(r["variant_id"], r["site"], r["pos"], r["n_sites"]) for r in per_site] == \
        [(a, 0, 4, 1), (f"{a}:{b}", 0, 4, 2), (f"{a}:{b}", 1, 8, 2)]
    assert per_site[1]["llr"] == pytest.approx(rows[a]["llr"], abs=1e-9)
    assert per_site[2]["llr"] == pytest.approx(rows[b]["llr"], abs=1e-9)
    assert per_site[1]["llr_joint"] == pytest.approx(joint[0], abs=1e-5)
    assert per_site[2]["llr_joint"] == pytest.approx(joint[1], abs=1e-5)
    assert (per_site[1]["ref"], per_site[1]["alt"], per_site[2]["alt"]) == (seq[4], "C", "W")


def test_dna_multi_base_variant_joint_on_both_strands(tmp_path, dna_models, references):
    seq = random_dna(40, seed=12)
    atlas = _ingest(tmp_path, dna_models["overlapping_kmer"], {"s": seq}, "a", kind="dna",
                    likelihood="exact", strands="both")
    p = 20
    alts = "".join(next(c for c in DNA if c != seq[q]) for q in (p, p + 1))
    vcf = write_vcf(tmp_path / "v.vcf", [("s", p + 1, seq[p : p + 2], alts),
                                         ("s", p + 1, seq[p], alts[0]),
                                         ("s", p + 2, seq[p + 1], alts[1])])
    rows = score_variants(vcf, atlas=atlas, joint=True, **COMMON).table.to_pylist()
    mnv, first, second = rows
    assert mnv["n_sites"] == 2 and mnv["problem"] is None
    for column in ("llr", "llr_fwd", "llr_rc"):
        assert mnv[column] == pytest.approx(first[column] + second[column], abs=1e-9)
    reference = references("overlapping_kmer")
    joint = [reference.llr(reference.strands(seq, q, also=[o]), seq[q], alt)[2]
             for q, o, alt in ((p, p + 1, alts[0]), (p + 1, p, alts[1]))]
    assert mnv["llr_joint"] == pytest.approx(sum(joint), abs=1e-5)
    for single in (first, second):
        assert single["llr_joint"] == pytest.approx(single["llr"], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# 7. problems are rows, never dropped; 8. sequence names


@pytest.fixture(scope="module")
def chromosomes(tmp_path_factory, dna_models):
    """chr1 (an N at 0-based 10) and chr2, both strands, exact; and the same without stored
    distributions: (atlas, bare atlas, sequences)."""
    directory = tmp_path_factory.mktemp("chromosomes")
    one = random_dna(40, seed=41)
    records = {"chr1": one[:10] + "N" + one[11:], "chr2": random_dna(30, seed=42)}
    options = {"kind": "dna", "likelihood": "exact", "strands": "both"}
    model = dna_models["overlapping_kmer"]
    return (_ingest(directory, model, records, "a", **options),
            _ingest(directory, model, records, "bare", distributions="none", **options),
            records)


def _other(letter: str) -> str:
    return next(c for c in DNA if c != letter)


def _third(letter: str) -> str:
    return next(c for c in DNA if c not in (letter, _other(letter)))


def test_every_input_variant_is_a_row_with_its_problem(tmp_path, chromosomes):
    atlas, bare, seqs = chromosomes
    one, two = seqs["chr1"], seqs["chr2"]
    lines = [
        ("chr1", 5, one[4], _other(one[4]), None),
        ("chr1", 6, _other(one[5]), _third(one[5]), f"it has {one[5]} at chr1:6"),
        ("chr1", 41, "A", "C", "outside the sequence"),
        ("chr9", 3, "A", "C", "not in the atlas"),
        ("chr1", 7, one[6], one[6] + "T", "indel"),
        ("chr1", 8, one[7:9], one[7], "indel"),
        ("chr1", 9, one[8], "<DEL>", "symbolic allele <DEL>"),
        ("chr1", 11, "N", "A", "ref N is not one of the standard letters"),
        ("chr1", 11, "A", "C", "it has N at chr1:11"),
        ("chr2", 3, two[2], ",".join([_other(two[2]), "<INS>", "*",
                                      _third(two[2])]),
         None),
        ("chr2", 4, two[3], ".", "no alternate allele"),
        ("chr2", 5, two[4], two[4], "ALT equals REF"),
        ("chr1", 5, one[4], _other(one[4]), None),  # a duplicate of the first: kept
    ]
    vcf = write_vcf(tmp_path / "v.vcf", [line[:4] for line in lines])
    expected = []  # (line, problem words) per allele
    for number, (chrom, pos, ref, alts, problem) in enumerate(lines, start=3):
        for alt in alts.split(","):
            words = problem
            if alt == "<INS>":
                words = "symbolic allele <INS>"
            elif alt == "*":
                words = "spanning deletion"
            expected.append((number, words))
    for path in (atlas, bare):
        result = score_variants(vcf, atlas=path, **COMMON)
        rows = result.table.to_pylist()
        assert len(rows) == len(expected) == 16 == result.variants
        for got, (number, words) in zip(rows, expected):
            assert got["line"] == number and got["source"] == str(vcf)
            if words is None:
                assert got["problem"] is None and got["llr"] is not None, got
                continue
            assert got["problem"] is not None and words in got["problem"], (words, got)
            for column in ("llr", "llr_fwd", "llr_rc", "llr_joint", "p_alt", "p_ref",
                           "rank_alt", "distribution"):
                assert got[column] is None, (column, got)
        assert result.scored == 4 and result.unscored == 12
        assert [r["duplicate_of"] for r in rows][-2:] == [None, 3] and rows[-1]["llr"] == \
            rows[0]["llr"]
        assert result.problems == {"REF mismatch": 2, "outside the sequence": 1,
                                   "sequence not in the atlas": 1, "indel": 2,
                                   "symbolic allele": 2, "not a standard letter": 1,
                                   "spanning deletion": 1, "no alternate allele": 1,
                                   "ALT equals REF": 1}
        # only the scorable sites are rescored
        assert result.sites_rescored == (4 if path == bare else 0)
    mismatch = rows[1]
    assert mismatch["atlas_ref"] == one[5] and mismatch["pos"] == 5
    assert f"REF {_other(one[5])} does not match the atlas" in mismatch["problem"]


def test_protein_problems_are_rows(protein):
    atlas, seq = protein
    ok = f"{seq[2]}3{_other_amino(seq[2])}"
    mutants = [ok, f"{_other_amino(seq[3])}4A", f"{seq[0]}26A", f"{seq[1]}2*",
               f"{ok}:{_other_amino(seq[3])}4A"]
    rows = score_variants(mutants, atlas=atlas, **COMMON).table.to_pylist()
    assert [r["variant_id"] for r in rows] == mutants
    assert rows[0]["problem"] is None
    assert f"it has {seq[3]} at p:4" in rows[1]["problem"]
    assert "outside the sequence" in rows[2]["problem"] and "1-25" in rows[2]["problem"]
    assert "stop" in rows[3]["problem"]
    assert rows[4]["problem"].startswith(f"{_other_amino(seq[3])}4A: REF")
    assert all(r["llr"] is None for r in rows[1:])


def _other_amino(letter: str) -> str:
    return "W" if letter != "W" else "A"


def test_problem_summary_of_a_multi_site_variant_names_the_reason(protein):
    atlas, seq = protein
    bad = f"{_other_amino(seq[3])}4A"
    result = score_variants([f"{seq[2]}3{_other_amino(seq[2])}:{bad}"], atlas=atlas,
                            **COMMON)
    assert result.table["problem"][0].as_py().startswith(f"{bad}: REF")
    assert result.problems == {"REF mismatch": 1}


def test_per_site_rows_of_a_variant_with_a_problem_have_no_llr(protein):
    atlas, seq = protein
    good, bad = f"{seq[2]}3{_other_amino(seq[2])}", f"{_other_amino(seq[3])}4A"
    rows = score_variants([f"{good}:{bad}"], atlas=atlas, per_site=True,
                          **COMMON).table.to_pylist()
    assert [(r["site"], r["pos"]) for r in rows] == [(0, 2), (1, 3)]
    assert all(r["problem"] is not None for r in rows)
    assert rows[1]["llr"] is None
    assert rows[0]["llr"] is None and rows[0]["p_alt"] is None


def test_chromosome_names_chr_prefix_and_chrom_map(tmp_path, chromosomes):
    atlas, _, seqs = chromosomes
    sites = [(p, seqs["chr1"][p]) for p in (0, 20, 39)] + [(p, seqs["chr2"][p]) for p in (1, 29)]
    chroms = ["chr1"] * 3 + ["chr2"] * 2

    def vcf(name, rename):
        records = [(rename[c], p + 1, r, _other(r)) for c, (p, r) in zip(chroms, sites)]
        return write_vcf(tmp_path / name, records)

    want = score_variants(vcf("a.vcf", {"chr1": "chr1", "chr2": "chr2"}), atlas=atlas,
                          **COMMON).table.to_pylist()
    assert all(r["problem"] is None for r in want)
    map_file = tmp_path / "map.tsv"
    map_file.write_text("# input atlas\none\tchr1\ntwo chr2\n")
    for name, rename, options in (
            ("b.vcf", {"chr1": "1", "chr2": "2"}, {}),
            ("c.vcf", {"chr1": "CHR1", "chr2": "Chr2"}, {}),
            ("d.vcf", {"chr1": "one", "chr2": "two"}, {"chrom_map": {"one": "chr1",
                                                                     "two": "chr2"}}),
            ("e.vcf", {"chr1": "one", "chr2": "two"}, {"chrom_map": map_file})):
        got = score_variants(vcf(name, rename), atlas=atlas, **options, **COMMON).table
        for a, b, chrom in zip(want, got.to_pylist(), chroms):
            assert b["seq_id"] == chrom and b["input_seq_id"] == rename[chrom]
            assert b["problem"] is None and b["llr"] == a["llr"] and b["pos"] == a["pos"]
    tsv = tmp_path / "v.tsv"
    tsv.write_text("chrom\tpos\tref\talt\n" + "".join(
        f"{c[3:]}\t{p + 1}\t{r}\t{_other(r)}\n" for c, (p, r) in zip(chroms, sites)))
    got = score_variants(tsv, atlas=atlas, **COMMON).table.to_pylist()
    assert [(r["seq_id"], r["pos"], r["llr"]) for r in got] == \
        [(r["seq_id"], r["pos"], r["llr"]) for r in want]
    unmapped = score_variants(vcf("f.vcf", {"chr1": "one", "chr2": "2"}), atlas=atlas,
                              **COMMON).table.to_pylist()
    assert all("'one' is not in the atlas" in r["problem"] for r in unmapped[:3])
    assert all(r["problem"] is None for r in unmapped[3:])
    with pytest.raises(seqatlas.SeqAtlasError, match="not a sequence of the atlas"):
        score_variants(vcf("g.vcf", {"chr1": "one", "chr2": "two"}), atlas=atlas,
                       chrom_map={"one": "chr7"}, **COMMON)


# ---------------------------------------------------------------------------------------------
# 9. offsets


def test_offset_numbers_residues_from_offset_plus_one(protein):
    atlas, seq = protein
    alt = _other_amino(seq[4])
    plain = score_variants([f"{seq[4]}5{alt}"], atlas=atlas, **COMMON).table.to_pylist()[0]
    rows = score_variants([f"{seq[4]}15{alt}", f"{seq[0]}11{_other_amino(seq[0])}",
                           f"{seq[0]}10A", f"{seq[24]}35{_other_amino(seq[24])}",
                           f"{seq[24]}36A"], atlas=atlas, offset=10,
                          **COMMON).table.to_pylist()
    shifted = rows[0]
    assert (shifted["pos"], shifted["input_position"], shifted["atlas_ref"]) == (4, 15, seq[4])
    assert shifted["llr"] == plain["llr"] and shifted["problem"] is None
    assert rows[1]["pos"] == 0 and rows[3]["pos"] == 24
    assert rows[1]["problem"] is None and rows[3]["problem"] is None
    for row in (rows[2], rows[4]):
        assert "outside the sequence" in row["problem"] and "--offset 10" in row["problem"]
        assert row["llr"] is None


def test_lookup_on_an_unmasked_atlas_rescores_in_exact_mode(tmp_path, copies, copies_reference):
    """probe icl's mode for an unmasked atlas is exact: the three look-up LLRs are exact-mode
    LLRs, while llr stays the atlas's own (unmasked) one."""
    _, seq, model = copies
    atlas = _ingest(tmp_path, model, {"p": seq}, "u", kind="protein", likelihood="unmasked")
    assert probe_icl(atlas, method="mask", **COMMON).likelihood == "exact"
    ablations = _ablations(atlas, "mask", 0)
    site = max(ablations)
    row = ablations[site]
    alt = _other_amino(seq[site])
    got = score_variants([f"{seq[site]}{site + 1}{alt}"], atlas=atlas, lookup=True,
                         **COMMON).table.to_pylist()[0]
    reference = copies_reference
    i, j = AMINO.index(seq[site]), AMINO.index(alt)
    plain = reference.distribution(seq, site, unmasked=True)
    assert got["llr"] == pytest.approx(plain[j] - plain[i], abs=1e-5)
    for role in ("intact", "partner", "control"):
        regions = [] if role == "intact" else [(row[f"{role}_start"], row[f"{role}_end"])]
        d = reference.distribution(seq, site, masked_regions=regions)
        assert got[f"llr_{role}"] == pytest.approx(d[j] - d[i], abs=1e-5), role
        assert d[i] == pytest.approx(row[f"logp_{role}"], abs=1e-5), role


def test_mutant_strings_and_files_mix(tmp_path, protein):
    atlas, seq = protein
    table = tmp_path / "dms.csv"
    first, second = f"{seq[2]}3{_other_amino(seq[2])}", f"{seq[6]}7{_other_amino(seq[6])}"
    table.write_text(f"mutant,DMS_score\n{second},0.5\n{first}:{second},-1\n")
    result = score_variants([first, table], atlas=atlas, **COMMON)
    rows = result.table.to_pylist()
    assert [r["variant_id"] for r in rows] == [first, second, f"{first}:{second}"]
    assert [r["line"] for r in rows] == [None, 2, 3]
    assert rows[2]["llr"] == pytest.approx(rows[0]["llr"] + rows[1]["llr"], abs=1e-9)


def test_lookup_on_a_fast_atlas_uses_the_fast_passes(tmp_path, copies, copies_reference):
    """Fast mode: each rescoring masks the site's whole pass, as ingest and probe icl do."""
    _, seq, model = copies
    atlas = _ingest(tmp_path, model, {"p": seq}, "f", kind="protein", likelihood="fast")
    assert probe_icl(atlas, method="mask", **COMMON).likelihood == "fast"
    ablations = _ablations(atlas, "mask", 0)
    rows = _positions(atlas)
    stride = seqatlas.Atlas(atlas).manifest["scoring"]["fast"]["stride"]
    sites = sorted(ablations)[:2] + sorted(ablations)[-2:]
    mutants = [f"{seq[p]}{p + 1}{_other_amino(seq[p])}" for p in sites]
    result = score_variants(mutants + [f"{mutants[0]}:{mutants[-1]}"], atlas=atlas,
                            lookup=True, joint=True, **COMMON).table.to_pylist()
    reference = copies_reference
    for got, p in zip(result, sites):
        row = ablations[p]
        i, j = AMINO.index(seq[p]), AMINO.index(got["alt"])
        also = _fast_companions(rows, "p", p, stride)
        for role in ("intact", "partner", "control"):
            regions = [] if role == "intact" else [(row[f"{role}_start"], row[f"{role}_end"])]
            d = reference.distribution(seq, p, masked_regions=regions, also=also)
            assert got[f"llr_{role}"] == pytest.approx(d[j] - d[i], abs=1e-5), role
            assert d[i] == pytest.approx(row[f"logp_{role}"], abs=1e-5), role
        assert got["llr_intact"] == pytest.approx(got["llr"], abs=1e-6)
        assert got["llr_joint"] == pytest.approx(got["llr"], abs=1e-6)
    # joint in fast mode: each site's pass, with the other site masked too
    a, b = sites[0], sites[-1]
    joint = 0.0
    for p, other in ((a, b), (b, a)):
        d = reference.distribution(seq, p, also=_fast_companions(rows, "p", p, stride)
                                   + [other])
        joint += d[AMINO.index(_other_amino(seq[p]))] - d[AMINO.index(seq[p])]
    assert result[-1]["llr_joint"] == pytest.approx(joint, abs=1e-5)
