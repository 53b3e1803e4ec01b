"""Model adapters: vocabularies, special tokens, manifest facts, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from seqatlas.errors import ModelError
from seqatlas.checkpoints import resolve_model
from seqatlas.checkpoints.tokenizers import detect_family
from tests.conftest import BERT_VOCAB


def test_bert_vocabulary_is_read_directly(tiny_bert):
    spec = resolve_model(str(tiny_bert), kind="protein")
    tok = spec.tokenizer()
    assert spec.family == "single" and spec.model_type == "bert"
    assert tok.specials.prefix == (2,) and tok.specials.suffix == (3,)
    assert tok.specials.mask == 4 and tok.specials.unk == 1
    ids = tok.tokenize(b"MKxa").ids.tolist()
    assert ids == [2, BERT_VOCAB.index("M"), BERT_VOCAB.index("K"), 1, BERT_VOCAB.index("A"), 3]
    assert tok.letter_index(b"AYx").tolist() == [0, 19, -1]
    assert spec.context_tokens == 40 and tok.residues_per_window(spec.context_tokens) == 38


def test_manifest_facts_are_real(tiny_esm):
    from transformers import AutoModelForMaskedLM

    spec = resolve_model(str(tiny_esm), kind="protein")
    model = AutoModelForMaskedLM.from_pretrained(tiny_esm)
    assert spec.parameters == sum(p.numel() for p in model.parameters())
    assert spec.weights_sha256 == hashlib.sha256(
        (tiny_esm / "model.safetensors").read_bytes()).hexdigest()
    described = spec.describe()
    assert described["tokenizer"]["family"] == "single"
    assert described["context_tokens"] == 34  # ESM: max_position_embeddings - 2


def test_incomplete_kmer_vocabulary_is_refused_with_a_reason():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                         "AAA", "AAC", "AAG", "AAT", "ACA"])}
    with pytest.raises(ModelError, match="--tokenizer"):
        detect_family(vocab)


def test_unknown_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not a checkpoint directory"):
        resolve_model(str(tmp_path / "missing"), kind="protein")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="vocabulary"):
        resolve_model(str(tmp_path / "empty"), kind="protein")


def test_embedded_protein_model_refuses_dna():
    with pytest.raises(ModelError, match="protein model"):
        resolve_model("antiberty", kind="dna")


def test_embedded_antiberty_resolves_without_loading_weights():
    spec = resolve_model("antiberty", kind="protein")
    assert spec.parameters == 25_759_769 and spec.hidden_size == 512 and spec.num_layers == 8
    assert spec.tokenizer().letters == "ACDEFGHIKLMNPQRSTVWY"
    assert spec.tokenizer().candidates[1].token_ids.tolist() == list(range(5, 25))


def test_embedded_models_are_listed_with_facts(capsys):
    import json

    import seqatlas
    from seqatlas.cli.main import main

    rows = {r["name"]: r for r in seqatlas.models()}
    assert set(rows) == {"antiberty", "dnabert6-tiny"}
    dna = rows["dnabert6-tiny"]
    assert dna["family"] == "overlapping_kmer" and dna["k"] == 6 and dna["alphabet"] == "ACGT"
    assert dna["context_tokens"] == 130 and dna["window_residues"] == 133  # as trained
    assert 100_000 < dna["parameters"] < 5_000_000
    assert rows["antiberty"]["parameters"] == 25_759_769
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(seqatlas.models()))
    assert main(["models", "--format", "table"]) == 0
    text = capsys.readouterr().out
    assert "dnabert6-tiny" in text and "Hugging Face" in text


def test_embedded_dna_model_ships_small_safetensors_with_a_card():
    from seqatlas.checkpoints.loading import EMBEDDED_MODELS, embedded_directory

    directory = embedded_directory(EMBEDDED_MODELS["dnabert6-tiny"])
    weights = directory / "model.safetensors"
    assert weights.exists() and weights.stat().st_size <= 10 * 2**20
    card = (directory / "MODEL_CARD.md").read_text()
    assert "held-out" in card.lower() and "0.25" in card
