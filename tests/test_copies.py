"""The in-context copy detector against a brute-force reference, at ingest, and as repeats."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import AtlasMismatchError, ConfigError
from seqatlas.copy_detector import nearest_copies, surrounding_kmer_start, window_copies
from seqatlas.repeats.copies import copy_repeats
from tests.conftest import AMINO, write_fasta
from tests.dna_models import make_overlapping

COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
PROTEIN_MATCHED = set(AMINO + "UO")


def reverse_complement(seq: str) -> str:
    return "".join(COMPLEMENT[c] for c in reversed(seq))


def brute_force(window: str, k: int, nucleic: bool, lo: int = 0, hi: int | None = None):
    """The module docstring's definition, one position and one candidate at a time."""
    s = window.upper().replace("U", "T") if nucleic else window.upper()
    matched = set("ACGT") if nucleic else PROTEIN_MATCHED
    hi = len(s) if hi is None else hi
    offsets, strands = [], []
    for i in range(lo, hi):
        candidates = []
        if len(s) >= k:
            a = min(max(i - (k - 1) // 2, 0), len(s) - k)
            kmer = s[a : a + k]
            if set(kmer) <= matched:
                for b in range(len(s) - k + 1):
                    if b != a and s[b : b + k] == kmer:
                        candidates.append((abs(b - a), 0, b - a, 1))
                    if nucleic and s[b : b + k] == reverse_complement(kmer):
                        offset = b + (k - 1) - (i - a) - i
                        assert offset != 0  # no base is its own complement
                        candidates.append((abs(offset), 1, offset, -1))
        best = min(candidates) if candidates else (0, 0, 0, 0)
        offsets.append(best[2])
        strands.append(best[3])
    return np.array(offsets, dtype=np.int32), np.array(strands, dtype=np.int8)


def planted(rng: random.Random, length: int, alphabet: str, nucleic: bool) -> str:
    """Random sequence with direct copies, reverse-complement copies, a tandem repeat,
    an ambiguous letter and soft-masking."""
    s = [rng.choice(alphabet) for _ in range(length)]
    for _ in range(3):
        size = rng.randint(4, 25)
        a, b = rng.randrange(length - size), rng.randrange(length - size)
        piece = s[a : a + size]
        if nucleic and rng.random() < 0.5:
            piece = list(reverse_complement("".join(piece)))
        s[b : b + size] = piece
    period, start = rng.randint(1, 6), rng.randrange(length - 30)
    s[start : start + 30] = (s[start : start + period] * 30)[:30]
    if rng.random() < 0.4:
        s[rng.randrange(length)] = "N" if nucleic else "X"
    text = "".join(s)
    if rng.random() < 0.3:
        cut = rng.randrange(length)
        text = text[:cut].lower() + text[cut:]
    return text


@pytest.mark.parametrize("k", [1, 3, 6, 12, 33])
def test_dna_matches_brute_force_across_many_windows(k):
    rng = random.Random(k)
    windows = [planted(rng, rng.randint(40, 140), "ACGT", True)[: rng.randint(1, 140)]
               for _ in range(40)]
    owned = [(rng.randint(0, len(w) // 2), rng.randint(len(w) // 2, len(w))) for w in windows]
    offset, strand = window_copies([w.encode() for w in windows], owned, k=k, nucleic=True)
    expected = [brute_force(w, k, True, lo, hi) for w, (lo, hi) in zip(windows, owned)]
    np.testing.assert_array_equal(offset, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(strand, np.concatenate([e[1] for e in expected]))
    assert offset.dtype == np.int32 and strand.dtype == np.int8
    if k in (6, 12):  # the planted copies were found, in both orientations
        assert (strand == 1).sum() > 20 and (strand == -1).sum() > 10


@pytest.mark.parametrize("k", [2, 6, 14, 20])
def test_protein_matches_brute_force_and_has_no_reverse_complements(k):
    rng = random.Random(100 + k)
    windows = [planted(rng, rng.randint(50, 200), AMINO + "UO", False) for _ in range(30)]
    owned = [(0, len(w)) for w in windows]
    offset, strand = window_copies([w.encode() for w in windows], owned, k=k, nucleic=False)
    expected = [brute_force(w, k, False) for w in windows]
    np.testing.assert_array_equal(offset, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(strand, np.concatenate([e[1] for e in expected]))
    assert (strand == 1).sum() > 50 and not (strand == -1).any()


def test_direct_and_reverse_complement_copies_by_hand():
    motif = "GATTACACCGTA"
    assert reverse_complement(motif) != motif
    flank = "TTTTTTTTTTTT"  # fills the gaps without making the motif again
    seq = "C" * 6 + motif + flank + motif + flank + reverse_complement(motif) + "C" * 6
    offset, strand = nearest_copies(seq, k=12, nucleic=True)
    first, second, rc = 6, 30, 54
    # the motif's centred 12-mer is the motif itself at i = start + 5
    assert (offset[first + 5], strand[first + 5]) == (24, 1)
    # the second copy: upstream copy at -24 beats the reverse complement
    assert (offset[second + 5], strand[second + 5]) == (-24, 1)
    # the reverse complement's base 5 pairs with base 11 - 5 of the nearer (second) copy
    assert (offset[rc + 5], strand[rc + 5]) == (second + 6 - (rc + 5), -1)


def test_tandem_repeat_and_palindrome_overlap_themselves():
    offset, strand = nearest_copies("CA" * 10, k=4, nucleic=True)
    # period 2: ties between -2 and +2 go upstream; the first k-mers have no upstream copy
    assert offset.tolist() == [2, 2, 2] + [-2] * 17 and (strand == 1).all()
    # GAATTC is its own reverse complement: each base pairs with its mirror in the k-mer
    offset, strand = nearest_copies("GAATTC", k=6, nucleic=True)
    assert offset.tolist() == [5, 3, 1, -1, -3, -5] and (strand == -1).all()


def test_copies_stay_inside_the_window_and_edges_shift_inward():
    motif = "ACGGTCAATGCA"
    window = motif + "T" * 20 + motif
    offset, _ = nearest_copies(window, k=12, nucleic=True)
    # positions 0..5 all use the k-mer starting at 0; the last six the one at len - 12
    assert surrounding_kmer_start([0, 5, 6, 30, 43], 44, 12).tolist() == [0, 0, 1, 25, 32]
    assert offset[:6].tolist() == [32] * 6 and offset[-6:].tolist() == [-32] * 6
    # the same copy one base outside the window does not count
    offset, strand = window_copies([window[:-1].encode(), window.encode()], [(0, 6), (0, 6)],
                                   k=12, nucleic=True)
    assert offset[:6].tolist() == [0] * 6 and (strand[:6] == 0).all()
    assert offset[6:].tolist() == [32] * 6
    # a window shorter than k has no k-mers at all
    assert nearest_copies("ACGTACG", k=8, nucleic=True)[0].tolist() == [0] * 7


def test_ambiguous_letters_never_match_and_case_does_not_matter():
    motif = "ACGGTCAATGCA"
    offset, _ = nearest_copies(motif + "T" * 8 + motif, k=12, nucleic=True)
    assert offset[5] == 20
    with_n = motif[:3] + "N" + motif[4:]
    assert nearest_copies(with_n + "T" * 8 + with_n, k=12, nucleic=True)[0][5] == 0
    assert nearest_copies("N" * 30, k=4, nucleic=True)[0].tolist() == [0] * 30
    soft = motif.lower() + "T" * 8 + motif
    np.testing.assert_array_equal(nearest_copies(soft, k=12, nucleic=True)[0], offset)
    rna = (motif + "T" * 8 + motif).replace("T", "U")
    np.testing.assert_array_equal(nearest_copies(rna, k=12, nucleic=True)[0], offset)
    protein = "MKVLAT" + "GGG" + "MKVLAT"
    assert nearest_copies(protein, k=6, nucleic=False)[0][2] == 9
    assert nearest_copies(protein.replace("V", "X"), k=6, nucleic=False)[0][2] == 0


# --- at ingest ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dnabert(tmp_path_factory):
    return make_overlapping(tmp_path_factory.mktemp("dnabert") / "k6", k=6, context_tokens=40)


def random_dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(length))


def _dna_records() -> dict[str, str]:
    body = random_dna(300, seed=7)
    motif = body[10:24]
    long = body[:100] + motif + body[100:200] + reverse_complement(motif) + body[200:]
    long = long[:150] + "N" * 12 + long[150:]  # a run of 12 N: not scored with threshold 10
    return {"long": long, "short": body[:30] + motif + "ACG" + motif,
            "hairpin": body[240:248] + motif + "TTT" + reverse_complement(motif),
            "tiny": "ACGTA"}


def _ingest_dna(tmp_path, model, name, records=None, **options):
    fasta = write_fasta(tmp_path / f"{name}.fa", records or _dna_records())
    options = {"likelihood": "unmasked", "embeddings": False, "skip_n_runs": 10,
               "workers": 0, "progress": False, **options}
    seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(model), **options)
    return seqatlas.Atlas(tmp_path / name)


def test_ingest_stores_the_copies_of_each_positions_own_window(tmp_path, tiny_dnabert):
    records = _dna_records()
    atlas = _ingest_dna(tmp_path, tiny_dnabert, "dna", copy_k=8)
    assert atlas.manifest["scoring"]["copy_k"] == 8
    rows = atlas.positions().to_pylist()
    assert len(rows) == sum(len(s) for s in records.values())
    checked = copies = 0
    for row in rows:
        if row["window_start"] is None:  # in the N run
            assert row["copy_offset"] is None and row["copy_strand"] is None
            continue
        window = records[row["seq_id"]][row["window_start"] : row["window_end"]]
        local = row["pos"] - row["window_start"]
        offset, strand = brute_force(window, 8, True, local, local + 1)
        expected = (int(offset[0]), {1: "+", -1: "-"}.get(int(strand[0])))
        assert (row["copy_offset"], row["copy_strand"]) == (expected if expected[1] else
                                                            (None, None))
        checked += 1
        copies += row["copy_offset"] is not None
    assert checked == len(rows) - 12 and copies > 20
    by_pos = {(r["seq_id"], r["pos"]): r for r in rows}
    # "short" fits one window: the second motif copy sits 17 bases after the first
    assert (by_pos["short", 37]["copy_offset"], by_pos["short", 37]["copy_strand"]) == (17, "+")
    assert all(by_pos["tiny", p]["copy_offset"] is None for p in range(5))


def test_default_k_per_kind_and_copy_k_zero_turns_it_off(tmp_path, tiny_dnabert, tiny_esm):
    atlas = _ingest_dna(tmp_path, tiny_dnabert, "default")
    assert atlas.manifest["scoring"]["copy_k"] == 12
    off = _ingest_dna(tmp_path, tiny_dnabert, "off", copy_k=0)
    assert off.manifest["scoring"]["copy_k"] == 0
    positions = off.positions(columns=["copy_offset", "copy_strand"])
    assert positions.num_rows > 0
    assert positions["copy_offset"].null_count == positions.num_rows
    assert positions["copy_strand"].null_count == positions.num_rows
    protein = "MKTAYIAKQRQISFVKSHFSRQ"
    fasta = write_fasta(tmp_path / "p.fa", {"p": protein[:12] + "GW" + protein[:12]})
    seqatlas.ingest(fasta, atlas=tmp_path / "protein", model=str(tiny_esm),
                    likelihood="unmasked", workers=0, progress=False)
    atlas = seqatlas.Atlas(tmp_path / "protein")
    assert atlas.manifest["scoring"]["copy_k"] == 6
    rows = atlas.positions(columns=["pos", "copy_offset", "copy_strand"]).to_pylist()
    assert rows[5] == {"pos": 5, "copy_offset": 14, "copy_strand": "+"}
    assert {r["copy_strand"] for r in rows} <= {"+", None}


def test_copy_k_is_validated_recorded_and_checked_on_resume(tmp_path, tiny_dnabert, capsys):
    with pytest.raises(ConfigError, match="--copy-k"):
        _ingest_dna(tmp_path, tiny_dnabert, "negative", copy_k=-1)
    with pytest.raises(ConfigError, match="longer than the window"):
        _ingest_dna(tmp_path, tiny_dnabert, "too_long", copy_k=500)
    _ingest_dna(tmp_path, tiny_dnabert, "atlas", copy_k=8)
    with pytest.raises(AtlasMismatchError, match="copy_k: atlas 8, now 10"):
        _ingest_dna(tmp_path, tiny_dnabert, "atlas", copy_k=10)
    fasta = tmp_path / "atlas.fa"
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model",
                 str(tiny_dnabert), "--likelihood", "unmasked", "--embeddings", "none",
                 "--skip-n-runs", "10", "--copy-k", "8", "--workers", "0", "--no-progress"])
    assert code == 0
    cli, api = seqatlas.Atlas(tmp_path / "cli"), seqatlas.Atlas(tmp_path / "atlas")
    assert cli.manifest["scoring"] == api.manifest["scoring"]
    columns = ["seq_id", "pos", "copy_offset", "copy_strand"]
    assert cli.positions(columns).sort_by([("seq_id", "ascending"), ("pos", "ascending")]) \
        .equals(api.positions(columns).sort_by([("seq_id", "ascending"),
                                                ("pos", "ascending")]))
    assert main(["ingest", "--help"]) == 0
    assert "--copy-k" in capsys.readouterr().out


# --- exported as repeats ------------------------------------------------------------------

def _reference_intervals(atlas) -> list[tuple]:
    """Runs of consecutive positions of one window with the same shift or mirror axis."""
    rows = sorted((r for r in atlas.positions().to_pylist() if r["copy_offset"] is not None),
                  key=lambda r: (r["seq_id"], r["pos"]))
    out, run = [], []

    def close():
        if run:
            first, last = run[0], run[-1]
            direct = first["copy_strand"] == "+"
            s, e = first["pos"], last["pos"] + 1
            if direct:
                partner = (s + first["copy_offset"], e + first["copy_offset"])
            else:
                axis = 2 * s + first["copy_offset"]
                partner = (axis - e + 1, axis - s + 1)
            out.append((first["seq_id"], s, e, first["copy_strand"],
                        f"{first['seq_id']}:{partner[0]}-{partner[1]}",
                        "direct" if direct else "reverse_complement"))

    def key(r):
        axis = r["copy_offset"] if r["copy_strand"] == "+" else 2 * r["pos"] + r["copy_offset"]
        return r["seq_id"], r["window_start"], r["copy_strand"], axis

    for r in rows:
        if run and (key(r) != key(run[-1]) or r["pos"] != run[-1]["pos"] + 1):
            close()
            run = []
        run.append(r)
    close()
    return out


def _as_tuples(table: pa.Table) -> list[tuple]:
    return sorted((r["seq_id"], r["start"], r["end"], r["strand"], r["name"], r["family"])
                  for r in table.to_pylist())


def test_annotate_detect_cli_and_api_agree_and_are_idempotent(tmp_path, tiny_dnabert, capsys):
    api = _ingest_dna(tmp_path, tiny_dnabert, "api", copy_k=8)
    cli = _ingest_dna(tmp_path, tiny_dnabert, "cli", copy_k=8)
    expected = copy_repeats(api.path)
    assert _as_tuples(expected) == sorted(_reference_intervals(api))
    assert set(expected["class"].to_pylist()) == {"in_context_copy"}
    assert set(expected["source"].to_pylist()) == {"seqatlas-copies"}
    assert {"+", "-"} <= set(expected["strand"].to_pylist())
    # "short": motif [30, 44) and its copy [47, 61) in the window [18, 61); the 8-mers
    # centred on 33..39 lie inside the motif, and 50..60 (shifted inward at the window's end)
    assert ("short", 33, 40, "+", "short:50-57", "direct") in _as_tuples(expected)
    assert ("short", 50, 61, "+", "short:33-44", "direct") in _as_tuples(expected)
    # "hairpin" (one window): motif [8, 22) pairs with its reverse complement [25, 39),
    # base 8 + j with base 38 - j
    assert ("hairpin", 11, 18, "-", "hairpin:29-36", "reverse_complement") \
        in _as_tuples(expected)
    assert ("hairpin", 28, 39, "-", "hairpin:8-19", "reverse_complement") \
        in _as_tuples(expected)

    summary = seqatlas.annotate(atlas=api.path, detect=True)
    assert summary["repeats"] == expected.num_rows and not summary["already_imported"]
    assert main(["annotate", "--detect", "--atlas", str(cli.path)]) == 0
    assert f"{expected.num_rows:,} in-context copies (k = 8) imported" in \
        " ".join(capsys.readouterr().out.split())
    api_rows, cli_rows = seqatlas.Atlas(api.path).repeats(), seqatlas.Atlas(cli.path).repeats()
    assert _as_tuples(api_rows) == _as_tuples(cli_rows) == _as_tuples(expected)

    again = seqatlas.annotate(atlas=api.path, detect=True)
    assert again["already_imported"] and again["repeats"] == 0
    assert main(["annotate", "--detect", "--atlas", str(api.path)]) == 0
    assert "already imported" in capsys.readouterr().out
    assert seqatlas.Atlas(api.path).repeats().num_rows == expected.num_rows

    # a further input: only its copies are added, nothing twice
    more = write_fasta(tmp_path / "more.fa", {"more": "ACGTTGCAAC" * 4})
    seqatlas.ingest(more, atlas=api.path, model=str(tiny_dnabert), likelihood="unmasked",
                    embeddings=False, skip_n_runs=10, copy_k=8, workers=0, progress=False)
    added = seqatlas.annotate(atlas=api.path, detect=True)
    assert added["repeats"] > 0 and added["positions_parts"] == 1
    assert _as_tuples(seqatlas.Atlas(api.path).repeats()) == _as_tuples(copy_repeats(api.path))


def test_annotate_needs_exactly_one_source(tmp_path, tiny_dnabert, capsys):
    atlas = _ingest_dna(tmp_path, tiny_dnabert, "one", copy_k=8)
    bed = tmp_path / "r.bed"
    bed.write_text("long\t1\t5\n")
    with pytest.raises(ConfigError, match="exactly one"):
        seqatlas.annotate(atlas=atlas.path)
    with pytest.raises(ConfigError, match="exactly one"):
        seqatlas.annotate(bed, atlas=atlas.path, detect=True)
    assert main(["annotate", "--atlas", str(atlas.path)]) == 1
    assert main(["annotate", str(bed), "--detect", "--atlas", str(atlas.path)]) == 1
    assert capsys.readouterr().err.count("exactly one") == 2
    off = _ingest_dna(tmp_path, tiny_dnabert, "off", copy_k=0)
    with pytest.raises(ConfigError, match="--copy-k 0"):
        seqatlas.annotate(atlas=off.path, detect=True)
