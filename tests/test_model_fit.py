"""Whether a model fits its input (seqatlas.checkpoints.fit): the vocabulary's kind against
the input's, the core letters it has tokens for, masked LMs only, the low-likelihood warning
after an ingest, and the weights-hash cache (seqatlas.checkpoints.digests)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas import schema
from seqatlas.checkpoints import digests, resolve_model
from seqatlas.checkpoints.fit import (LOW_LIKELIHOOD, check_model_fit, count_letters,
                                      likelihood_warning, mean_likelihood, vocabulary_kind)
from seqatlas.cli.main import main
from seqatlas.errors import AtlasError, ModelError
from seqatlas.store import AtlasReader, AtlasWriter
from tests.conftest import AMINO, BERT_VOCAB, ESM_VOCAB, random_protein, write_fasta
from tests.dna_models import SPECIALS, _bert, make_overlapping
from tests.query_data import _table

COMMON = {"workers": 0, "progress": False}
ROOT = Path(__file__).parent.parent


def _no_count(letters: str):
    pytest.fail(f"the input was read to count {letters!r} for a model that fits")


def _bert_with(directory: Path, residues: str, *, favour: str | None = None,
               bias: float = 10.0) -> Path:
    """A tiny random BERT MLM whose vocabulary has ``residues`` (and BERT's specials); with
    ``favour``, its output bias gives that letter a logit ``bias`` above every other."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + list(residues)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(3)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32,
                                       num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=40,
                                       pad_token_id=0))
    if favour is not None:
        with torch.no_grad():
            model.cls.predictions.bias.zero_()
            model.cls.predictions.bias[vocab.index(favour)] = bias
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fit_models")
    return {"kmer3": make_overlapping(root / "kmer3", 3),
            "no_w": _bert_with(root / "no_w", AMINO.replace("W", "")),
            "no_t": _bert_with(root / "no_t", "ACGN"),
            "favours_l": _bert_with(root / "favours_l", AMINO, favour="L")}


# -- the kind of a vocabulary ------------------------------------------------------------

def test_the_kind_of_a_vocabulary_is_read_from_its_tokens():
    def kind(tokens):
        return vocabulary_kind({t: i for i, t in enumerate(tokens)})

    assert kind(ESM_VOCAB) == ("protein", "single-letter tokens for all 20 amino acids")
    assert kind(BERT_VOCAB)[0] == "protein"
    assert kind(SPECIALS + list(AMINO.replace("W", "").replace("Y", ""))) == \
        ("protein", "single-letter tokens for 18 of the 20 amino acids")
    assert kind(SPECIALS + list(AMINO[:17]))[0] is None  # too few to call it protein
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=3)]
    assert kind(SPECIALS + kmers) == ("nucleic", "3-mer tokens over ACGT")  # DNABERT
    assert kind(SPECIALS + kmers + list("ACGTN")) == \
        ("nucleic", "tokens of 1-3 letters over ACGNT")  # Nucleotide Transformer
    assert kind(SPECIALS + list("ACGUN")) == ("nucleic", "single-letter tokens over ACGNU")
    assert kind(SPECIALS + list("ACGTN") + ["AC", "TTA", "GGTCA"]) == \
        ("nucleic", "tokens of 1-5 letters over ACGNT")  # BPE pieces
    assert kind(SPECIALS + ["the", "cat", "sat"])[0] is None


def test_count_letters_counts_both_cases():
    assert count_letters([b"ACgt", b"aaN"], "AGTW") == {"A": 3, "G": 1, "T": 1, "W": 0}


# -- refusals before anything is written -------------------------------------------------

def test_a_dna_kmer_model_on_proteins_is_refused_naming_the_letters(tmp_path, models, capsys):
    seq = "MKKLLVVIIAGT" + "K" * 5
    fasta = write_fasta(tmp_path / "p.fa", {"p": seq})
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model",
                 str(models["kmer3"]), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: ") and "Traceback" not in err
    text = " ".join(err.split())
    assert f"model '{models['kmer3']}' is a DNA/RNA model (3-mer tokens over ACGT)" in text
    assert "the input is protein" in text
    assert "no token for I, K, L, M, V (occurrences in the input: I 2, K 7, L 2, M 1, V 2)" \
        in text
    assert "--model with a protein checkpoint" in text and "--kind dna or rna" in text
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kind, letters", [("dna", "A, C, G, T"), ("rna", "A, C, G, U")])
def test_a_protein_model_on_nucleic_acid_is_refused(tmp_path, tiny_esm, kind, letters):
    seq = "ACGTTGCAAGTCCGATGCATGCAATG"
    fasta = write_fasta(tmp_path / "n.fa", {"n": seq if kind == "dna" else
                                            seq.replace("T", "U")})
    with pytest.raises(ModelError) as caught:
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), **COMMON)
    text = str(caught.value)
    assert f"model '{tiny_esm}' is a protein model (single-letter tokens for all 20 amino " \
        f"acids) and the input is {kind.upper()}" in text
    assert f"it would score {letters} as the amino acids alanine, cysteine, glycine" in text
    assert "dnabert6-tiny" in text and "--kind protein" in text
    assert not (tmp_path / "a").exists()


def test_a_protein_vocabulary_lacking_an_amino_acid_is_refused_only_where_it_occurs(
        tmp_path, models):
    """A vocabulary without W scores inputs without W; a W in the input is refused, naming it
    with its count, and an atlas it would extend is left as it was."""
    without = write_fasta(tmp_path / "a.fa", {"a": random_protein(30, 1).replace("W", "A")})
    seqatlas.ingest(without, atlas=tmp_path / "x", model=str(models["no_w"]),
                    embeddings=False, likelihood="unmasked", **COMMON)
    manifest = (tmp_path / "x" / "atlas.json").read_bytes()
    with_w = write_fasta(tmp_path / "b.fa",
                         {"b": "MWKW" + random_protein(20, 2).replace("W", "A") + "W"})
    for atlas in ("x", "y"):
        with pytest.raises(ModelError, match=r"has no token for W \(occurrences in the "
                           r"input: W 3\) of the protein alphabet ACDEFGHIKLMNPQRSTVWY"):
            seqatlas.ingest(with_w, atlas=tmp_path / atlas, model=str(models["no_w"]),
                            embeddings=False, likelihood="unmasked", **COMMON)
    assert (tmp_path / "x" / "atlas.json").read_bytes() == manifest
    assert not (tmp_path / "y").exists()


def test_a_dna_model_lacking_a_base_is_refused(tmp_path, models):
    fasta = write_fasta(tmp_path / "d.fa", {"d": "ACGTTGCAAGTCCGATGCATGCAATG"})
    with pytest.raises(ModelError, match=r"has no token for T \(occurrences in the input: "
                       r"T 6\) of the DNA alphabet ACGT"):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(models["no_t"]), **COMMON)
    assert not (tmp_path / "a").exists()


def test_models_that_fit_are_never_made_to_count(models, tiny_bert, tiny_esm):
    """Core letters all present (RNA through a DNA model's T; a protein vocabulary without
    U, X or O, which keep null scores): the input is not read again."""
    for model, kind in ((models["kmer3"], "dna"), (models["kmer3"], "rna"),
                        (tiny_bert, "protein"), (tiny_esm, "protein"),
                        ("dnabert6-tiny", "rna")):
        check_model_fit(resolve_model(str(model), kind=kind), _no_count)


def test_probe_doubling_and_knn_check_the_model_too(tmp_path, models):
    fasta = write_fasta(tmp_path / "p.fa", {"p": "MKVLIAGT"})
    with pytest.raises(ModelError, match="is a DNA/RNA model"):
        seqatlas.probe_doubling(fasta, model=str(models["kmer3"]),
                                output=tmp_path / "out.parquet", progress=False)
    assert not (tmp_path / "out.parquet").exists()
    # an atlas recorded as protein but scored with a DNA model (as before this check)
    dna = write_fasta(tmp_path / "d.fa", {"d": "ACGTTGCAAGTCCGATGCATGCAATG"})
    seqatlas.ingest(dna, atlas=tmp_path / "a", model=str(models["kmer3"]), embeddings=False,
                    **COMMON)
    manifest = json.loads((tmp_path / "a" / "atlas.json").read_text())
    manifest["model"]["tokenizer"]["letters"] = AMINO
    (tmp_path / "a" / "atlas.json").write_text(json.dumps({**manifest, "kind": "protein"}))
    from seqatlas.checkpoints.recorded import atlas_model_spec

    with pytest.raises(ModelError, match=r"the input is protein: it has no token for D, E, "):
        atlas_model_spec(AtlasReader(tmp_path / "a"))


def _gpt2(directory: Path) -> Path:
    """A tiny GPT-2 with a protein vocabulary and a <mask> token added to it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["<|endoftext|>", "<pad>", "<unk>", "<mask>", *AMINO]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def test_a_causal_lm_is_refused_by_the_masked_adapter_without_reading_its_weights(
        tmp_path, capsys):
    gpt2 = _gpt2(tmp_path / "gpt2")
    for weights in gpt2.glob("*.safetensors"):
        weights.write_bytes(b"not weights")  # never read
    fasta = write_fasta(tmp_path / "p.fa", {"p": random_protein(20, 1)})
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model", str(gpt2),
                 "--adapter", "transformers", "--workers", "0", "--no-progress"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "Traceback" not in err
    assert f"Error: {gpt2} is a gpt2 model (causal LM: the transformers-causal adapter " \
        "scores it with --likelihood causal); the transformers adapter needs a masked " \
        "language model (BERT, ESM, RoBERTa, ...)" in err
    assert not (tmp_path / "a").exists()
    # detected, it is a causal model, resolved from its config without reading the weights
    spec = resolve_model(str(gpt2), kind="protein")
    assert spec.adapter == "transformers-causal" and spec.objective == "causal"
    assert spec.specials.mask == -1


def test_a_bert_decoder_is_a_causal_lm(tmp_path):
    directory = tmp_path / "decoder"
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    _bert(directory, len(BERT_VOCAB), context_tokens=20, seed=1, is_decoder=True)
    with pytest.raises(ModelError, match=r"is a bert model \(causal LM"):
        resolve_model(str(directory), kind="protein", adapter="transformers")
    assert resolve_model(str(directory), kind="protein").objective == "causal"


# -- the low-likelihood warning ------------------------------------------------------------

def _warnings(atlas: Path) -> list[dict] | None:
    return json.loads((atlas / "atlas.json").read_text()).get("warnings")


def _column_mean(atlas: Path, column: str) -> float:
    values = [v for v in seqatlas.Atlas(atlas).positions([column])[column].to_pylist()
              if v is not None]
    return sum(values) / len(values)


def test_a_mean_logp_below_uniform_is_warned_recorded_and_dropped_when_it_recovers(
        tmp_path, models):
    """The model puts its mass on L: an input of W and K is predicted far worse than
    uniform (warned, recorded); adding enough L lifts the atlas's mean above the baseline
    (the warning is dropped); an input of L alone never warns."""
    model = str(models["favours_l"])
    options = {"model": model, "embeddings": False, **COMMON}
    low = write_fasta(tmp_path / "low.fa", {"wk": "WKWKWKWKWKWKWKWKWKWKWKWKWKWKWK"})
    with pytest.warns(UserWarning, match="may be out of domain") as caught:
        seqatlas.ingest(low, atlas=tmp_path / "a", **options)
    (recorded,) = _warnings(tmp_path / "a")
    mean = _column_mean(tmp_path / "a", "logp")
    assert mean < -8
    assert recorded["code"] == LOW_LIKELIHOOD and recorded["column"] == "logp"
    assert recorded["mean_logp"] == pytest.approx(mean, abs=1e-3)
    assert recorded["baseline"] == round(-math.log(20), 4) and recorded["positions"] == 30
    assert recorded["model"] == model
    message = str(caught[-1].message)
    assert message == recorded["message"]
    assert f"model '{model}' may be out of domain" in message
    assert f"is {mean:.2f}, below the uniform baseline log(1/20) = -3.00" in message
    summary = seqatlas.info(tmp_path / "a")
    assert summary["warnings"] == [recorded]

    high = write_fasta(tmp_path / "high.fa", {"l": "L" * 150})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        seqatlas.ingest(high, atlas=tmp_path / "a", **options)
    assert not [w for w in seen if "out of domain" in str(w.message)]
    assert _column_mean(tmp_path / "a", "logp") > -math.log(20)
    assert _warnings(tmp_path / "a") is None
    before = (tmp_path / "a" / "atlas.json").read_bytes()
    seqatlas.ingest(high, atlas=tmp_path / "a", **options)  # nothing new: not recomputed
    assert (tmp_path / "a" / "atlas.json").read_bytes() == before

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        seqatlas.ingest(high, atlas=tmp_path / "b", likelihood="unmasked", **options)
    assert not [w for w in seen if "out of domain" in str(w.message)]
    assert _warnings(tmp_path / "b") is None and _column_mean(tmp_path / "b",
                                                             "logp_unmasked") > -0.01


def test_the_cli_prints_the_warning_on_stderr_and_info_shows_it(tmp_path, models, capsys):
    fasta = write_fasta(tmp_path / "low.fa", {"wk": "WK" * 15})
    code = ("import sys; from seqatlas.cli.main import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", code, "ingest", str(fasta), "--atlas", str(tmp_path / "a"),
         "--model", str(models["favours_l"]), "--likelihood", "unmasked", "--embeddings",
         "none", "--workers", "0", "--no-progress"], capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYTHONWARNINGS": ""}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    stderr = " ".join(done.stderr.split())
    assert "UserWarning" in stderr and "may be out of domain for these sequences" in stderr
    assert "mean logp_unmasked over the 30 scored positions" in stderr
    assert "log(1/20) = -3.00" in stderr
    assert main(["info", str(tmp_path / "a")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: model" in out and "may be out of domain" in out
    assert main(["info", str(tmp_path / "a"), "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["warnings"]
    assert shown["code"] == LOW_LIKELIHOOD and shown["column"] == "logp_unmasked"


def _synthetic_atlas(path: Path, *, kind: str, model: dict, values: dict[str, list],
                     strands: str = "forward") -> Path:
    n = len(next(iter(values.values())))
    scoring = {"likelihood": "exact", "embeddings": False, "strands": strands, "window": 100,
               "overlap": 25, "embedding_dtype": None, "layer": None}
    with AtlasWriter(path, kind=kind, model=model, scoring=scoring) as writer:
        positions = {"seq_id": ["s"] * n, "pos": np.arange(n), "ref": ["A"] * n,
                     "soft_masked": [False] * n, **values}
        writer.commit("p" * 24, {"positions": _table(schema.POSITIONS, positions)})
    return path


MODEL = {"name": "synthetic", "model_type": "bert", "weights_sha256": "0" * 64,
         "tokenizer": {"family": "single"}}


def test_the_mean_is_over_finite_values_of_the_atlas_likelihood_column(tmp_path):
    atlas = _synthetic_atlas(tmp_path / "a", kind="dna", model=MODEL, strands="both", values={
        "logp": [-9.0, -9.0, -9.0, -9.0], "logp_mean": [-1.0, -2.0, None, -math.inf]})
    assert mean_likelihood(AtlasReader(atlas)) == ("logp_mean", -1.5, 2)
    warning = likelihood_warning(AtlasReader(atlas))
    assert warning["baseline"] == round(math.log(0.25), 4) and warning["positions"] == 2
    assert "log(1/4) = -1.39" in warning["message"]
    fine = _synthetic_atlas(tmp_path / "b", kind="dna", model=MODEL, values={
        "logp": [-1.0, -1.2]})
    assert likelihood_warning(AtlasReader(fine)) is None


def test_antiberty_is_described_as_an_antibody_model(tmp_path, capsys):
    """The models listing says so, and so does the warning on an atlas scored with it."""
    (row,) = [r for r in seqatlas.models() if r["name"] == "antiberty"]
    assert "An antibody model: out of domain for general proteins" in row["description"]
    assert main(["models"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "antibody model: out of domain for general proteins" in out
    model = {**MODEL, "name": "antiberty", "source": "embedded"}
    atlas = _synthetic_atlas(tmp_path / "a", kind="protein", model=model,
                             values={"logp": [-3.6, -3.7]})
    message = likelihood_warning(AtlasReader(atlas))["message"]
    assert "(AntiBERTy is an antibody model, trained on antibody variable domains only)" \
        in message and "below the uniform baseline log(1/20) = -3.00" in message


def test_manifest_warnings_are_optional_and_type_checked(tmp_path):
    atlas = _synthetic_atlas(tmp_path / "a", kind="dna", model=MODEL,
                             values={"logp": [-1.0]})
    data = json.loads((atlas / "atlas.json").read_text())
    assert "warnings" not in data and AtlasReader(atlas).manifest.warnings is None
    assert seqatlas.info(atlas)["warnings"] == []
    for bad in ({"warnings": {"code": "x"}}, {"warnings": [{"code": "x", "message": 3}]},
                {"warnings": [{"message": "no code"}]},
                {"warnings": [{"code": "x", "message": "m", "positions": True}]}):
        (atlas / "atlas.json").write_text(json.dumps({**data, **bad}))
        with pytest.raises(AtlasError, match="corrupt"):
            AtlasReader(atlas)


# -- the weights-hash cache ---------------------------------------------------------------

def test_the_weights_hash_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "cache"))
    model = _bert_with(tmp_path / "m", AMINO)
    weights = model / "model.safetensors"
    calls = []
    real = digests.hash_files
    monkeypatch.setattr(digests, "hash_files", lambda paths: calls.append(paths) or real(paths))
    truth = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert resolve_model(str(model), kind="protein").weights_sha256 == truth
    assert resolve_model(str(model), kind="protein").weights_sha256 == truth
    assert len(calls) == 1 and (tmp_path / "cache" / digests.CACHE_FILE).is_file()
    info = weights.stat()
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # touched
    assert resolve_model(str(model), kind="protein").weights_sha256 == truth
    assert len(calls) == 2
    weights.write_bytes(weights.read_bytes() + b" ")  # new size, new bytes
    changed = resolve_model(str(model), kind="protein").weights_sha256
    assert len(calls) == 3 and changed == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert changed != truth


def test_a_corrupt_or_unwritable_cache_falls_back_to_hashing(tmp_path, monkeypatch):
    model = _bert_with(tmp_path / "m", AMINO)
    truth = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(cache))
    for text in ("{not json", json.dumps({"version": 1, "entries": ["x"]}),
                 json.dumps({"version": 1, "entries": {"k": 5}}), "\xff"):
        (cache / digests.CACHE_FILE).write_text(text)
        assert resolve_model(str(model), kind="protein").weights_sha256 == truth
    entries = json.loads((cache / digests.CACHE_FILE).read_text())["entries"]
    assert list(entries.values()) == [truth]  # rewritten whole
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    assert resolve_model(str(model), kind="protein").weights_sha256 == truth


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "own"))
    assert digests.cache_dir() == tmp_path / "own"
    monkeypatch.delenv("SEQATLAS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digests.cache_dir() == tmp_path / "xdg" / "seqatlas"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert digests.cache_dir() == tmp_path / "home" / ".cache" / "seqatlas"


def test_the_test_run_does_not_write_the_users_cache():
    assert Path(os.environ["SEQATLAS_CACHE_DIR"]).name.startswith("seqatlas_cache")


# -- the config-facts cache: a re-run imports neither transformers nor torch ---------------

def _spec_fields(spec) -> dict:
    return {f: getattr(spec, f) for f in ("model_type", "hidden_size", "num_layers",
                                           "context_tokens", "parameters", "family", "k",
                                           "weights_sha256")}


def test_config_facts_are_remembered_until_the_config_changes(tmp_path, monkeypatch):
    from seqatlas.checkpoints import hf_masked as loading

    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "cache"))
    model = _bert_with(tmp_path / "m", AMINO)
    calls = []
    real = loading._read_config_facts
    monkeypatch.setattr(loading, "_read_config_facts",
                        lambda *a, **kw: calls.append(a) or real(*a, **kw))
    first = _spec_fields(resolve_model(str(model), kind="protein"))
    assert first["hidden_size"] == 32 and first["num_layers"] == 1
    assert first["context_tokens"] == 40
    from transformers import BertForMaskedLM  # the parameter count is the model's own
    truth = sum(p.numel() for p in BertForMaskedLM.from_pretrained(model).parameters())
    assert first["parameters"] == truth
    assert _spec_fields(resolve_model(str(model), kind="protein")) == first
    assert len(calls) == 1 and (tmp_path / "cache" / digests.FACTS_CACHE_FILE).is_file()
    config = json.loads((model / "config.json").read_text())
    config["seqatlas_context_tokens"] = 24  # an edit, whatever its size or mtime
    (model / "config.json").write_text(json.dumps(config))
    edited = _spec_fields(resolve_model(str(model), kind="protein"))
    assert len(calls) == 2 and edited == {**first, "context_tokens": 24}


def test_a_damaged_facts_cache_is_read_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(cache))
    model = _bert_with(tmp_path / "m", AMINO)
    truth = _spec_fields(resolve_model(str(model), kind="protein"))
    stored = json.loads((cache / digests.FACTS_CACHE_FILE).read_text())
    (key, facts), = stored["entries"].items()
    broken = [{**facts, "hidden_size": None} | {"extra": 1}, {"hidden_size": 32}, "x", 7]
    for value in broken:  # wrong fields, wrong type: recomputed, never trusted
        (cache / digests.FACTS_CACHE_FILE).write_text(
            json.dumps({"version": 1, "entries": {key: value}}))
        assert _spec_fields(resolve_model(str(model), kind="protein")) == truth
    for text in ("{not json", "\xff", json.dumps({"version": 99, "entries": {key: 1}})):
        (cache / digests.FACTS_CACHE_FILE).write_text(text)
        assert _spec_fields(resolve_model(str(model), kind="protein")) == truth
    assert json.loads((cache / digests.FACTS_CACHE_FILE).read_text())["entries"] == \
        {key: facts}


def test_a_refused_config_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "cache"))
    gpt2 = _gpt2(tmp_path / "gpt2")
    for _ in range(2):
        with pytest.raises(ModelError, match=r"gpt2 model \(causal LM"):
            resolve_model(str(gpt2), kind="protein", adapter="transformers")
    assert not (tmp_path / "cache" / digests.FACTS_CACHE_FILE).exists()


def test_the_embedded_directory_is_found_without_importing_its_package():
    from seqatlas.checkpoints.loading import EMBEDDED_MODELS, embedded_directory

    code = ("import sys, json; from seqatlas.checkpoints.loading import EMBEDDED_MODELS, "
            "embedded_directory; d = embedded_directory(EMBEDDED_MODELS['antiberty']); "
            "print(json.dumps([str(d), 'antiberty' in sys.modules, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    directory, imported, torch_loaded = json.loads(out)
    import antiberty
    assert directory == str(Path(antiberty.__file__).parent /
                            "trained_models/AntiBERTy_md_smooth")
    assert Path(directory, "config.json").is_file() and not imported and not torch_loaded
    assert embedded_directory(EMBEDDED_MODELS["antiberty"]) == Path(directory)


_NOOP_RERUN = """
import json, sys
from seqatlas.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "ray", "antiberty", "faiss")
               if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize("which", ["directory", "antiberty"])
def test_a_no_op_rerun_imports_neither_torch_nor_transformers_nor_ray(tmp_path, which):
    model = str(_bert_with(tmp_path / "m", AMINO)) if which == "directory" else "antiberty"
    fasta = write_fasta(tmp_path / "p.fa", {"p1": random_protein(30, 1),
                                            "p2": random_protein(25, 2)})
    atlas = tmp_path / "a"
    env = {**os.environ, "SEQATLAS_CACHE_DIR": str(tmp_path / "cache")}
    args = ["ingest", str(fasta), "--atlas", str(atlas), "--model", model,
            "--workers", "0", "--no-progress"]

    def run() -> tuple[dict, str]:
        done = subprocess.run([sys.executable, "-c", _NOOP_RERUN, *args], env=env,
                              capture_output=True, text=True, check=True)
        *report, last = done.stdout.splitlines()
        return json.loads(last), " ".join([*report, done.stderr])

    first, _ = run()
    assert first["code"] == 0 and "torch" in first["heavy"]  # it scored
    parts = sorted((p.name, p.stat().st_mtime_ns) for p in atlas.rglob("*.parquet"))
    again, err = run()
    assert again == {"code": 0, "heavy": []}
    assert "0 unit(s) scored" in " ".join(err.split())
    assert sorted((p.name, p.stat().st_mtime_ns) for p in atlas.rglob("*.parquet")) == parts
    (tmp_path / "cache" / digests.FACTS_CACHE_FILE).unlink()  # a cold cache still works
    cold, _ = run()
    assert cold["code"] == 0 and "transformers" in cold["heavy"]
