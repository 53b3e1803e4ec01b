"""Every ingest says how many positions it left unscored and why (issue 28): a long N run,
a residue letter the model has no token for (by letter), an ambiguity code (by letter);
in the report, the run record and on stderr, never silently."""

from __future__ import annotations

import json
import random
import warnings

import pytest

import seqatlas
from seqatlas.cli.main import main
from tests.conftest import make_bert


def _dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def _run_record(atlas) -> dict:
    return json.loads((atlas / "atlas.json").read_text())["runs"][-1]


def _ingest(fasta, atlas, **options):
    """The ingest's report and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = seqatlas.ingest(fasta, atlas=atlas, embeddings=False, workers=0,
                                 progress=False, **options)
    return report, [str(w.message) for w in caught]


def test_dna_with_a_stray_u_an_n_run_and_ambiguity_codes(tmp_path, capsys):
    seq = _dna(120, 1) + "U" + _dna(40, 2) + "N" * 70 + _dna(60, 3) + "R" + _dna(30, 4) + \
        "nn" + _dna(50, 5)
    fasta = tmp_path / "s.fa"
    fasta.write_text(f">s\n{seq}\n>t\n{_dna(80, 6)}U{_dna(20, 7)}\n")
    report, caught = _ingest(fasta, tmp_path / "a", model="dnabert6-tiny", likelihood="unmasked")
    # letters as the positions table holds them (ref is upper case; "nn" is an N)
    expected = {"N run": 70, "no token: U": 2, "not a residue: R": 1, "not a residue: N": 2}
    assert report.unscored_reasons == expected
    assert report.positions_unscored == 70  # the N run, as before
    assert _run_record(tmp_path / "a")["unscored_reasons"] == expected
    letters = [message for message in caught if "no token for" in message]
    assert len(letters) == 1 and "U x2" in letters[0]
    # the counts are the rows whose logp is null, reason by reason
    nulls = seqatlas.Atlas(tmp_path / "a").sql(
        "SELECT ref, count(*) AS n FROM positions WHERE logp_unmasked IS NULL GROUP BY ref "
        "ORDER BY ref").to_pylist()
    assert {r["ref"]: r["n"] for r in nulls} == {"N": 72, "R": 1, "U": 2}

    # the CLI prints them on stderr
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model",
                 "dnabert6-tiny", "--likelihood", "unmasked", "--embeddings", "none",
                 "--workers", "0", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "unscored positions by reason" in err and "no token: U 2" in err \
        and "N run 70" in err


def test_a_clean_input_reports_nothing_unscored(tmp_path):
    fasta = tmp_path / "s.fa"
    fasta.write_text(f">s\n{_dna(300, 8)}\n")
    report, caught = _ingest(fasta, tmp_path / "a", model="dnabert6-tiny", likelihood="fast")
    assert report.unscored_reasons == {}
    assert _run_record(tmp_path / "a")["unscored_reasons"] == {}
    assert not [message for message in caught if "no token for" in message]


@pytest.mark.parametrize("mode", ["exact", "unmasked"])
def test_protein_letters_without_a_token_and_ambiguity_codes(tmp_path, mode):
    model = make_bert(tmp_path / "bert")  # AntiBERTy's vocabulary: 20 amino acids only
    fasta = tmp_path / "p.fa"
    fasta.write_text(">p\nMKTAYIAKQRQISFVKSHFSRQBLEERLGLIEVQZAPILSRVGDGTQDNLSGAEKAVQVKXGNAL\n"
                     ">q\nMKTAYUAKQRQISFVKSHF\n")
    report, caught = _ingest(fasta, tmp_path / "a", model=str(model), kind="protein",
                             likelihood=mode)
    assert report.unscored_reasons == {"not a residue: B": 1, "not a residue: X": 1,
                                       "not a residue: Z": 1, "no token: U": 1}
    assert any("U x1" in message for message in caught)
