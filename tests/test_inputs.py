"""What an ingest does with its inputs and options before and while it scores: letters per
kind and per model vocabulary, a --kind the content contradicts, UTF-8 headers, every
numeric option validated, repeated ids refused before any work, and a FASTA file that
changes during the ingest."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import seqatlas
from seqatlas.errors import (AtlasMismatchError, ConfigError, FastaError, InputError,
                             ModelError)
from seqatlas.fasta import detect_kind, scan_fasta
from seqatlas.scoring import pipeline
from seqatlas.scoring.pipeline import IngestConfig
from tests.conftest import random_protein, write_fasta
from tests.dna_models import SPECIALS, _bert, make_bpe, make_nonoverlapping, make_overlapping, \
    make_single

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
COMMON = {"workers": 0, "progress": False}
SCORES = ("logp", "logp_unmasked", "entropy", "rank")


def _rows(atlas: Path, columns=("seq_id", "pos", "ref", *SCORES)) -> list[dict]:
    table = seqatlas.Atlas(atlas).positions(columns=list(columns))
    return sorted(table.to_pylist(), key=lambda r: (r["seq_id"], r["pos"]))


def _manifest(atlas: Path) -> dict:
    return json.loads((atlas / "atlas.json").read_text())


def _no_infinity(rows: list[dict]) -> None:
    for row in rows:
        for key, value in row.items():
            assert not (isinstance(value, float) and math.isinf(value)), row


# -- letters per kind and per vocabulary ----------------------------------------------------

def _single_dna(directory: Path, letters: str) -> Path:
    """A single-base BERT MLM whose vocabulary has only ``letters`` (and the specials)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(SPECIALS + list(letters)) + "\n")
    _bert(directory, len(SPECIALS) + len(letters), context_tokens=20, seed=31)
    return directory


DNA_FAMILIES = {
    "single": lambda d: make_single(d),
    "overlapping_kmer": lambda d: make_overlapping(d, k=3),
    "nonoverlapping_kmer": lambda d: make_nonoverlapping(d, k=3),
    "bpe": lambda d: make_bpe(d),
}


@pytest.fixture(scope="module")
def dna_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dna_models")
    models = {name: str(make(root / name)) for name, make in DNA_FAMILIES.items()}
    models["embedded"] = "dnabert6-tiny"
    return models


def _reference_logp(model_dir: Path, residues: str, pos: int, letters: str) -> float:
    """log p(residues[pos]) with only ``pos`` masked, normalised over ``letters``' tokens,
    straight from transformers (ESM: <cls> x <eos>)."""
    import torch
    from transformers import AutoModelForMaskedLM

    vocab = {t: i for i, t in enumerate((model_dir / "vocab.txt").read_text().splitlines())}
    ids = [vocab["<cls>"]] + [vocab[c] for c in residues] + [vocab["<eos>"]]
    ids[pos + 1] = vocab["<mask>"]
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, pos + 1]
    chosen = logits[[vocab[c] for c in letters]]
    return float(torch.log_softmax(chosen, -1)[letters.index(residues[pos])])


def test_protein_u_is_scored_as_u_when_the_vocabulary_has_it(tmp_path, tiny_esm):
    """ESM has U (and O): each is scored as itself, against the standard letters plus it;
    the standard letters keep their distribution over the 20; X has no logp or rank."""
    seq = "MKTAYUAKQRQISFVKOHFSRQXLEERLGLIE"
    fasta = write_fasta(tmp_path / "u.fa", {"selenoprotein": seq})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), embeddings=False, **COMMON)
    rows = {r["pos"]: r for r in _rows(tmp_path / "a")}
    _no_infinity(list(rows.values()))
    for pos in (seq.index("U"), seq.index("O"), seq.index("T"), 0, 10):
        letters = STANDARD + (seq[pos] if seq[pos] not in STANDARD else "")
        assert rows[pos]["logp"] == pytest.approx(
            _reference_logp(tiny_esm, seq, pos, letters), abs=2e-4), pos
        assert rows[pos]["entropy"] is not None and rows[pos]["rank"] >= 1
    u, t = rows[seq.index("U")], rows[seq.index("T")]
    assert u["ref"] == "U" and u["logp"] != t["logp"]
    x = rows[seq.index("X")]
    assert x["logp"] is None and x["rank"] is None and x["entropy"] is not None


def test_protein_u_is_null_when_the_vocabulary_lacks_it(tmp_path, tiny_bert):
    """AntiBERTy's layout has no U or O: their rows are null (never T's score)."""
    seq = "MKTAYUAKQRQISFVKOHFSRQULEERLGLIE"
    fasta = write_fasta(tmp_path / "u.fa", {"p": seq, "lower": seq.lower()})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_bert), embeddings=False,
                    **COMMON)
    rows = _rows(tmp_path / "a")
    _no_infinity(rows)
    for row in rows:
        if row["ref"] in "UO":
            assert all(row[k] is None for k in SCORES), row
        else:
            assert all(row[k] is not None for k in SCORES), row


@pytest.mark.parametrize("family", sorted(DNA_FAMILIES) + ["embedded"])
def test_rna_is_read_by_a_dna_model_as_dna_and_the_map_is_recorded(tmp_path, dna_models,
                                                                   family):
    """An RNA scored with a DNA model (its vocabulary has T, not U) gives exactly the
    scores of the same sequence written as DNA, on both strands; the atlas records the
    map in model.letter_map; a DNA atlas records none and its tokenizer record is as
    before."""
    import random

    rng = random.Random(7)
    records = {f"r{i}": "".join(rng.choice("ACGT") for _ in range(n))
               for i, n in enumerate((70, 9, 33))}
    dna = write_fasta(tmp_path / "d.fa", records)
    rna = write_fasta(tmp_path / "r.fa", {k: v.replace("T", "U") for k, v in records.items()})
    options = {"model": dna_models[family], "strands": "both", "embeddings": False, **COMMON}
    seqatlas.ingest(dna, atlas=tmp_path / "dna", **options)
    seqatlas.ingest(rna, atlas=tmp_path / "rna", **options)
    columns = ("seq_id", "pos", "ref", *SCORES, "logp_rc", "logp_unmasked_rc")
    got_dna, got_rna = _rows(tmp_path / "dna", columns), _rows(tmp_path / "rna", columns)
    _no_infinity(got_rna)
    assert [r["ref"] for r in got_rna] == [r["ref"].replace("T", "U") for r in got_dna]
    strip = [{k: v for k, v in r.items() if k != "ref"} for r in got_rna]
    assert strip == [{k: v for k, v in r.items() if k != "ref"} for r in got_dna]
    scored = [r for r in got_rna if r["ref"] == "U" and r["logp"] is not None]
    assert scored, "no U was scored"
    rna_model, dna_model = _manifest(tmp_path / "rna")["model"], _manifest(tmp_path / "dna")["model"]
    assert _manifest(tmp_path / "rna")["kind"] == "rna"
    assert rna_model["letter_map"] == {"U": "T"} and "letter_map" not in dna_model
    assert rna_model["tokenizer"]["letters"] == "ACGU"
    assert {k: v for k, v in rna_model["tokenizer"].items() if k != "letters"} == \
        {k: v for k, v in dna_model["tokenizer"].items() if k != "letters"}


def test_dna_read_by_an_rna_model_maps_t_to_u(tmp_path):
    """The other way round: a vocabulary with U and no T reads a DNA's T as U."""
    model = str(_single_dna(tmp_path / "rna_model", "ACGUN"))
    seq = "ACGTTGCAAGTCCGATGCATGCAATG"
    dna = write_fasta(tmp_path / "d.fa", {"s": seq})
    rna = write_fasta(tmp_path / "r.fa", {"s": seq.replace("T", "U")})
    seqatlas.ingest(dna, atlas=tmp_path / "dna", model=model, embeddings=False, **COMMON)
    seqatlas.ingest(rna, atlas=tmp_path / "rna", model=model, embeddings=False, **COMMON)
    assert _manifest(tmp_path / "dna")["model"]["letter_map"] == {"T": "U"}
    assert "letter_map" not in _manifest(tmp_path / "rna")["model"]
    got_dna, got_rna = _rows(tmp_path / "dna"), _rows(tmp_path / "rna")
    assert all(r["logp"] is not None for r in got_dna)
    assert [r["logp"] for r in got_dna] == [r["logp"] for r in got_rna]


def test_letters_the_model_cannot_score_are_null_never_another_letters(tmp_path, dna_models):
    """A DNA's U read by a DNA model, an RNA's T read through the U->T map: null logp,
    entropy and rank; never -inf, never another letter's score. N keeps the entropy of the
    standard letters. A standard letter missing from the vocabulary (a model without T) is
    refused before anything is written (issue 13; tests/test_model_fit.py)."""
    no_t = str(_single_dna(tmp_path / "model_no_t", "ACGN"))
    seq = "ACGTACGGTCAUGCAAUGCNNACGTTGCA"
    fasta = write_fasta(tmp_path / "d.fa", {"s": seq})
    with pytest.raises(ModelError, match=r"no token for T \(occurrences in the input: T 4\)"):
        seqatlas.ingest(fasta, atlas=tmp_path / "no_t", model=no_t, embeddings=False,
                        **COMMON)
    assert not (tmp_path / "no_t").exists()
    for family in ("embedded", "single"):
        atlas = tmp_path / f"dna_{family}"
        seqatlas.ingest(fasta, atlas=atlas, model=dna_models[family], embeddings=False,
                        **COMMON)
        rows = _rows(atlas)
        _no_infinity(rows)
        for row in rows:
            if row["ref"] == "U":
                assert all(row[k] is None for k in SCORES), row
    mixed = write_fasta(tmp_path / "m.fa", {"s": "ACGUACGUUGCATGCAAUGCACGUUGCAUG"})
    with pytest.warns(UserWarning, match="looks like dna"):  # T and U: detected as DNA
        seqatlas.ingest(mixed, atlas=tmp_path / "rna_t", model="dnabert6-tiny", kind="rna",
                        embeddings=False, **COMMON)
    rows = _rows(tmp_path / "rna_t")
    _no_infinity(rows)
    assert all(all(r[k] is None for k in SCORES) for r in rows if r["ref"] == "T")
    assert any(r["logp"] is not None for r in rows if r["ref"] == "U")


def test_an_rna_atlas_scored_before_the_letter_map_is_not_extended(tmp_path):
    """An RNA atlas written by a seqatlas that stored -inf for every U (its model record
    has no letter_map) still reads, but is not extended with rows that would not match."""
    first = write_fasta(tmp_path / "a.fa", {"a": "ACGUACGUUGCAUGCAAUGCACGUUGCAUG"})
    second = write_fasta(tmp_path / "b.fa", {"b": "UUGCAUGCAAUGCACGUUGCAUGACGUACG"})
    options = {"model": "dnabert6-tiny", "embeddings": False, **COMMON}
    seqatlas.ingest(first, atlas=tmp_path / "old", **options)
    manifest = _manifest(tmp_path / "old")
    del manifest["model"]["letter_map"]
    (tmp_path / "old" / "atlas.json").write_text(json.dumps(manifest))
    before = (tmp_path / "old" / "atlas.json").read_bytes()
    with pytest.raises(AtlasMismatchError, match="new --atlas"):
        seqatlas.ingest(second, atlas=tmp_path / "old", **options)
    assert (tmp_path / "old" / "atlas.json").read_bytes() == before
    assert len(_rows(tmp_path / "old")) == 30
    seqatlas.ingest(first, atlas=tmp_path / "new", **options)
    seqatlas.ingest(second, atlas=tmp_path / "new", **options)  # a current atlas extends
    assert len(_rows(tmp_path / "new")) == 60


# -- a --kind the content contradicts --------------------------------------------------------

@pytest.mark.parametrize("given, content, detected", [
    ("protein", "ACGTTGCAAGTCCGATGCATGCAATG", "dna"),
    ("rna", "ACGTTGCAAGTCCGATGCATGCAATG", "dna"),
    ("dna", "ACGUUGCAAGUCCGAUGCAUGCAAUG", "rna"),
    ("protein", "ACGUUGCAAGUCCGAUGCAUGCAAUG", "rna"),
    ("dna", "MKVRRDHHWBS" * 3, "protein"),  # only letters that are IUPAC nucleotide codes
])
def test_a_kind_the_content_contradicts_warns_naming_the_file(tmp_path, given, content,
                                                              detected):
    fasta = write_fasta(tmp_path / "in.fa", {"s": content})
    with pytest.warns(UserWarning) as caught, pytest.raises(ModelError):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tmp_path / "no_model"),
                        kind=given, **COMMON)
    (warning,) = [w for w in caught if "looks like" in str(w.message)]
    text = str(warning.message)
    assert str(fasta) in text and f"--kind {given}" in text and f"looks like {detected}" in text
    assert not (tmp_path / "a").exists()


def test_a_kind_the_content_cannot_have_is_an_error_that_says_so(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", {"s": "ACDEFGHIKLMNPQRSTVWY"})
    with pytest.raises(FastaError, match=r"in.fa, line 2, record 's': illegal character "
                       r"'E' .* for kind 'dna'.*choose the right kind"):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model="dnabert6-tiny", kind="dna",
                        **COMMON)


def test_a_kind_the_content_agrees_with_does_not_warn(tmp_path, tiny_bert):
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(20, 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a random model is no better than uniform: that warning is not about the kind
        warnings.filterwarnings("ignore", message=".*may be out of domain")
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_bert), kind="protein",
                        embeddings=False, likelihood="unmasked", **COMMON)


def test_the_cli_prints_the_kind_warning_on_stderr(tmp_path):
    fasta = write_fasta(tmp_path / "dna.fa", {"s": "ACGTTGCAAGTCCGATGCATGCAATG"})
    code = ("import sys; from seqatlas.cli.main import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", code, "ingest", str(fasta), "--atlas", str(tmp_path / "a"),
         "--kind", "protein", "--model", str(tmp_path / "missing"), "--workers", "0",
         "--no-progress"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": ""}, cwd=Path(__file__).parent.parent)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "looks like dna" in done.stderr and str(fasta) in done.stderr


# -- UTF-8 headers -----------------------------------------------------------------------------

def test_utf8_headers_are_accepted(tmp_path, tiny_bert):
    seq = random_protein(25, 3)
    text = f">café α-helix ünïcode 🧬\n{seq}\n>β2 second\n{seq[::-1]}\n".encode()
    plain = tmp_path / "u.fa"
    plain.write_bytes(text)
    packed = tmp_path / "u.fa.gz"
    packed.write_bytes(gzip.compress(text))
    for path in (plain, packed):
        assert detect_kind(path) == "protein"
        summary = scan_fasta(path)
        assert [(r.id, r.description) for r in summary.records] == [
            ("café", "α-helix ünïcode 🧬"), ("β2", "second")]
    seqatlas.ingest(plain, atlas=tmp_path / "a", model=str(tiny_bert), embeddings=False,
                    likelihood="unmasked", **COMMON)
    sequences = seqatlas.Atlas(tmp_path / "a").sequences().to_pylist()
    assert [(s["seq_id"], s["description"]) for s in sequences] == [
        ("café", "α-helix ünïcode 🧬"), ("β2", "second")]


def test_a_utf8_letter_split_across_the_read_chunk_is_read(tmp_path):
    """The header decoder sees the bytes of 'é' in two reads of 1 MiB."""
    chunk = 1 << 20
    head = b">id " + b"x" * (chunk - 5)  # 'é' starts at byte chunk - 1
    path = tmp_path / "long.fa"
    path.write_bytes(head + "é tail\n".encode() + b"ACGTACGT\n")
    assert detect_kind(path) == "dna"
    (record,) = scan_fasta(path).records
    assert record.description.endswith("xé tail")
    path.write_bytes(head + b"\xc3\x28 tail\nACGT\n")  # invalid continuation byte
    for call in (detect_kind, scan_fasta):
        with pytest.raises(FastaError, match=rf"{path}, line 1: binary .*invalid UTF-8"):
            call(path)


@pytest.mark.parametrize("data, line, record, what", [
    (b">ok\nMKV\n>bad\x00\nMKV\n", 3, None, "NUL byte in the header of record number 2"),
    (b">ok\nMKV\n>caf\xe9\nMKV\n", 3, None, "invalid UTF-8"),
    (b">ok\nMKV\n>p2\nMK\x00V\n", 4, "p2", "byte 0x00 in a sequence line"),
    (b">ok\nMKV\n>p2\nMK\xc3\xa9V\n", 4, "p2", "byte 0xc3 in a sequence line"),
])
def test_binary_is_still_refused_naming_file_record_and_line(tmp_path, data, line, record,
                                                             what):
    path = tmp_path / "bin.fa"
    path.write_bytes(data)
    with pytest.raises(FastaError) as exc:
        scan_fasta(path, kind="protein")
    message = str(exc.value)
    assert f"{path}, line {line}" in message and what in message
    assert record is None or f"record '{record}'" in message
    with pytest.raises(FastaError, match=f"line {line}"):
        detect_kind(path)


# -- every numeric option is validated -----------------------------------------------------

BAD_OPTIONS = [
    ("window", 0), ("window", -3), ("window", 2.5), ("window", True), ("window", "10"),
    ("window", math.nan),
    ("overlap", -1), ("overlap", 1.5), ("overlap", math.inf),
    ("batch_tokens", 0), ("batch_tokens", -8), ("batch_tokens", 1e3),
    ("unit_tokens", 0), ("unit_tokens", -1), ("unit_tokens", "big"),
    ("max_retries", -1), ("max_retries", None), ("max_retries", 0.5),
    ("workers", -1), ("workers", 1.5), ("workers", False),
    ("cpus_per_worker", 0), ("cpus_per_worker", -2), ("cpus_per_worker", 0.5),
    ("gpus_per_worker", -1), ("gpus_per_worker", math.nan), ("gpus_per_worker", math.inf),
    ("gpus_per_worker", True), ("gpus_per_worker", "1"), ("gpus_per_worker", 1.5),
    ("skip_n_runs", -1), ("skip_n_runs", None), ("skip_n_runs", 2.5),
    ("copy_k", -1), ("copy_k", 1.5), ("copy_k", True),
    ("stall_timeout", -1.0), ("stall_timeout", math.nan),
    ("layer", "last"), ("layer", 1.0), ("layer", []),
    ("pool_bin", -1), ("pool_bin", 2.5), ("pool_bin", True), ("pool_bin", "1000"),
    ("fast_stride", 0), ("fast_stride", -4), ("fast_stride", 2.5), ("fast_stride", True),
]
GOOD_OPTIONS = [
    ("window", None), ("window", 1), ("overlap", 0), ("overlap", None), ("batch_tokens", 1),
    ("unit_tokens", 1), ("max_retries", 0), ("workers", 0), ("workers", None),
    ("cpus_per_worker", 1), ("gpus_per_worker", 0), ("gpus_per_worker", 0.25),
    ("gpus_per_worker", 2), ("gpus_per_worker", 2.0), ("skip_n_runs", 0), ("copy_k", 0),
    ("copy_k", None), ("stall_timeout", 0), ("layer", -1), ("layer", [0, 2]),
    ("pool_bin", 0), ("pool_bin", 1000), ("pool_bin", None),
    ("fast_stride", None), ("fast_stride", 1), ("fast_stride", 20),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-") if name != "layer" else "layer"


@pytest.mark.parametrize("name, value", BAD_OPTIONS)
def test_a_meaningless_numeric_option_is_refused_naming_it(name, value):
    with pytest.raises(ConfigError, match=_flag(name)):
        IngestConfig(**{name: value}).validate()


@pytest.mark.parametrize("name, value", GOOD_OPTIONS)
def test_meaningful_numeric_options_are_accepted(name, value):
    IngestConfig(**{name: value}).validate()


def test_every_numeric_option_is_covered():
    numeric = {name for name, f in IngestConfig.__dataclass_fields__.items()
               if any(t in str(f.type) for t in ("int", "float"))}
    assert numeric <= {name for name, _ in BAD_OPTIONS}, numeric


@pytest.mark.parametrize("options, message", [
    ({"window": 0}, "--window"), ({"overlap": -1}, "--overlap"),
    ({"unit_tokens": 0}, "--unit-tokens"), ({"gpus_per_worker": math.nan}, "--gpus-per-worker"),
    ({"windo": 10}, "unknown ingest option"),
])
def test_a_bad_option_stops_ingest_before_anything(tmp_path, monkeypatch, options, message):
    import seqatlas.checkpoints

    monkeypatch.setattr(seqatlas.checkpoints, "resolve_model",
                        lambda *a, **k: pytest.fail("the model was resolved"))
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(20, 1)})
    with pytest.raises(ConfigError, match=message):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", **options, **COMMON)
    assert not (tmp_path / "a").exists()


def test_window_zero_is_not_the_default_window(tiny_bert):
    """_window_geometry reads None as the default; 0 never reaches it silently."""
    from seqatlas.checkpoints import resolve_model

    tokenizer = resolve_model(str(tiny_bert), kind="protein").tokenizer()
    with pytest.raises(ConfigError, match="--window 0"):
        pipeline._window_geometry(IngestConfig(window=0), tokenizer, context_tokens=40)
    assert pipeline._window_geometry(IngestConfig(), tokenizer, context_tokens=40)[0] == 38


# -- repeated ids: refused before any work, nothing half-registered ----------------------------

@pytest.fixture
def atlas_with_a(tmp_path, tiny_bert):
    a = write_fasta(tmp_path / "a.fa", {"a1": random_protein(20, 1), "a2": random_protein(9, 2)})
    seqatlas.ingest(a, atlas=tmp_path / "x", model=str(tiny_bert), embeddings=False,
                    likelihood="unmasked", **COMMON)
    return tmp_path / "x"


def _snapshot(atlas: Path) -> dict[str, bytes]:
    return {str(p.relative_to(atlas)): p.read_bytes() for p in sorted(atlas.rglob("*"))
            if p.is_file()}


def test_a_repeated_id_is_refused_before_the_model_is_resolved(tmp_path, tiny_bert,
                                                              atlas_with_a, monkeypatch):
    import seqatlas.checkpoints

    new = write_fasta(tmp_path / "new.fa", {"n1": random_protein(12, 5)})
    clash = write_fasta(tmp_path / "clash.fa", {"c1": random_protein(12, 6),
                                                "a2": random_protein(12, 7)})
    before = _snapshot(atlas_with_a)
    monkeypatch.setattr(seqatlas.checkpoints, "resolve_model",
                        lambda *a, **k: pytest.fail("the model was resolved"))
    for inputs in ([new, clash], [clash]):
        with pytest.raises(InputError, match=r"clash.fa: record 'a2' is already in the atlas"):
            seqatlas.ingest(inputs, atlas=atlas_with_a, model=str(tiny_bert),
                            embeddings=False, likelihood="unmasked", **COMMON)
        assert _snapshot(atlas_with_a) == before


def test_registration_checks_every_input_before_committing_any(tmp_path, tiny_bert,
                                                               atlas_with_a, monkeypatch):
    """Under the writer's lock too (the early check skipped): the first new input is not
    committed when a later one is refused."""
    monkeypatch.setattr(pipeline, "_refuse_known_ids", lambda *a: None)
    new = write_fasta(tmp_path / "new.fa", {"n1": random_protein(12, 5)})
    clash = write_fasta(tmp_path / "clash.fa", {"a1": random_protein(12, 7)})
    before = (atlas_with_a / "atlas.json").read_bytes()
    with pytest.raises(InputError, match="already in the atlas"):
        seqatlas.ingest([new, clash], atlas=atlas_with_a, model=str(tiny_bert),
                        embeddings=False, likelihood="unmasked", **COMMON)
    assert (atlas_with_a / "atlas.json").read_bytes() == before
    assert [s["seq_id"] for s in seqatlas.Atlas(atlas_with_a).sequences().to_pylist()] == \
        ["a1", "a2"]


def test_known_inputs_and_new_ids_still_extend(tmp_path, tiny_bert, atlas_with_a):
    new = write_fasta(tmp_path / "new.fa", {"n1": random_protein(12, 5)})
    seqatlas.ingest([tmp_path / "a.fa", new], atlas=atlas_with_a, model=str(tiny_bert),
                    embeddings=False, likelihood="unmasked", **COMMON)
    assert [s["seq_id"] for s in seqatlas.Atlas(atlas_with_a).sequences().to_pylist()] == \
        ["a1", "a2", "n1"]


# -- a FASTA file that changes during the ingest --------------------------------------------

RECORDS = {"r1": random_protein(30, 11), "r2": random_protein(30, 12), "r3": random_protein(30, 13)}


def _rewrite(path: Path, how: str) -> None:
    records = dict(RECORDS)
    if how == "residues":
        records["r2"] = records["r2"][::-1]
    elif how == "case":  # the same residues, soft-masked: other rows (soft_masked)
        records["r2"] = records["r2"].lower()
    elif how == "length":
        records["r2"] += "MK"
    elif how == "removed":
        del records["r2"], records["r3"]
    elif how == "added":
        records["r4"] = "MKV"
    elif how == "renamed":
        records["r2b"] = records.pop("r2")
    if how == "binary":
        path.write_bytes(path.read_bytes().replace(b">r2\n", b">r2\n\x00\x00"))
        return
    write_fasta(path, {k: records[k] for k in sorted(records, key=lambda k: (k[:2], k))})


@pytest.mark.parametrize("how", ["residues", "case", "length", "removed", "added",
                                 "renamed", "binary"])
def test_a_file_changed_during_the_ingest_is_refused_and_not_committed(tmp_path, tiny_bert,
                                                                        monkeypatch, how):
    from seqatlas.scoring.scorer import Scorer

    fasta = write_fasta(tmp_path / "p.fa", RECORDS)
    plan_inputs, scored = pipeline._plan_inputs, []

    def plan_then_rewrite(*args, **kwargs):
        units = plan_inputs(*args, **kwargs)
        _rewrite(fasta, how)  # after the scan and the plan, before the scoring reads it
        return units

    original = Scorer.score

    def score(self, jobs):
        scored.extend(j.seq_id for j in jobs)
        return original(self, jobs)

    monkeypatch.setattr(pipeline, "_plan_inputs", plan_then_rewrite)
    monkeypatch.setattr(Scorer, "score", score)
    options = {"model": str(tiny_bert), "embeddings": False, "unit_tokens": 1,
               "max_retries": 5, **COMMON}
    with pytest.raises(InputError, match=rf"{fasta} changed during the ingest") as exc:
        seqatlas.ingest(fasta, atlas=tmp_path / "a", **options)
    assert "put that version back and re-run" in str(exc.value)
    rows = _rows(tmp_path / "a")
    changed = {"added": "r4"}.get(how, "r2")
    assert changed not in {r["seq_id"] for r in rows}
    assert changed not in scored  # never sent to the model, let alone retried
    if how != "added":
        assert {r["seq_id"] for r in rows} == {"r1"} and "r3" not in scored
    committed = [u for u in _manifest(tmp_path / "a")["units"].values() if "seq_ids" in u]
    assert all(changed not in u["seq_ids"] for u in committed)

    monkeypatch.setattr(pipeline, "_plan_inputs", plan_inputs)
    write_fasta(fasta, RECORDS)  # the planned version back: the re-run finishes
    seqatlas.ingest(fasta, atlas=tmp_path / "a", **options)
    seqatlas.ingest(fasta, atlas=tmp_path / "clean", **options)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "clean")
