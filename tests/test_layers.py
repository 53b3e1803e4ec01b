"""Several embedding layers at ingest: columns, values, manifest, CLI/API parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError
from seqatlas.scoring.scorer import Scorer, WindowJob
from seqatlas.checkpoints import load_model, resolve_model
from tests.conftest import ESM_VOCAB, random_protein, write_fasta

RECORDS = {"a": random_protein(30, seed=11), "b": random_protein(9, seed=12),
           "c": random_protein(21, seed=13)}


def _ingest(tmp_path, model, name="atlas", **options):
    fasta = write_fasta(tmp_path / f"{name}.fa", RECORDS)
    seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(model), workers=0, progress=False,
                    **options)
    return seqatlas.Atlas(tmp_path / name)


def _vectors(table, column) -> np.ndarray:
    return np.stack(table[column].to_numpy(zero_copy_only=False)).astype(np.float32)


def _reference_hidden(model_dir, seq: str) -> tuple:
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    ids = [ESM_VOCAB.index("<cls>")] + [ESM_VOCAB.index(c) for c in seq] + \
        [ESM_VOCAB.index("<eos>")]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return tuple(h[0, 1:-1].numpy() for h in out.hidden_states)


def test_two_layers_are_the_models_hidden_states(tmp_path, tiny_esm):
    atlas = _ingest(tmp_path, tiny_esm, likelihood="none", layer=[1, -1])
    scoring = atlas.manifest["scoring"]
    assert scoring["layers"] == [1, 2] and scoring["layer"] == 1
    tokens = atlas.tokens()
    assert tokens.column_names[-2:] == ["embedding", "embedding_layer_2"]
    assert tokens.schema.field("embedding_layer_2").type == tokens.schema.field("embedding").type
    for seq_id, seq in RECORDS.items():
        mine = tokens.filter(tokens["seq_id"].to_numpy(zero_copy_only=False) == seq_id) \
            .sort_by("start")
        assert mine["token"].to_pylist() == list(seq)
        hidden = _reference_hidden(tiny_esm, seq)
        for column, layer in (("embedding", 1), ("embedding_layer_2", 2)):
            np.testing.assert_allclose(_vectors(mine, column), hidden[layer], atol=2e-3,
                                       rtol=2e-3)
        assert not np.allclose(hidden[1], hidden[2], atol=0.1)  # really different layers
    # the DuckDB view sees every layer column
    got = atlas.sql('SELECT count(*) AS n, count(embedding_layer_2) AS n2, '
                    'max(len(embedding_layer_2)) AS d FROM tokens').to_pylist()[0]
    assert got == {"n": 60, "n2": 60, "d": 32}


def test_input_embeddings_and_three_layers(tmp_path, tiny_esm):
    atlas = _ingest(tmp_path, tiny_esm, likelihood="unmasked", layer=[2, 0, 1])
    assert atlas.manifest["scoring"]["layers"] == [2, 0, 1]
    tokens = atlas.tokens()
    a = tokens.filter(tokens["seq_id"].to_numpy(zero_copy_only=False) == "a").sort_by("start")
    hidden = _reference_hidden(tiny_esm, RECORDS["a"])
    for column, layer in (("embedding", 2), ("embedding_layer_0", 0),
                          ("embedding_layer_1", 1)):
        np.testing.assert_allclose(_vectors(a, column), hidden[layer], atol=2e-3, rtol=2e-3)


def test_layers_do_not_depend_on_batch_composition(tiny_esm):
    spec = resolve_model(str(tiny_esm), kind="protein")
    model = load_model(spec)
    jobs = [WindowJob(seq_id=name, token_offset=0, start=0, end=len(seq), own_start=0,
                      own_end=len(seq), residues=seq.encode()) for name, seq in RECORDS.items()]
    tables = []
    for budget, order in ((40, jobs), (16384, jobs[::-1])):  # one row per batch vs padded mix
        scorer = Scorer(model, likelihood="exact", embeddings=True, layer=[0, 1, 2],
                        batch_tokens=budget)
        tables.append(scorer.score(order)[1].sort_by([("seq_id", "ascending"),
                                                      ("start", "ascending")]))
    assert tables[0]["token_id"].equals(tables[1]["token_id"])
    for column in ("embedding", "embedding_layer_1", "embedding_layer_2"):
        np.testing.assert_allclose(_vectors(tables[0], column), _vectors(tables[1], column),
                                   atol=2e-3)


def test_cli_repeated_layer_matches_api(tmp_path, tiny_esm, capsys):
    fasta = write_fasta(tmp_path / "p.fa", RECORDS)
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model", str(tiny_esm),
                 "--likelihood", "fast", "--layer", "1", "--layer", "-1", "--workers", "0",
                 "--no-progress"])
    assert code == 0
    api = _ingest(tmp_path, tiny_esm, name="api", likelihood="fast", layer=[1, -1])
    cli = seqatlas.Atlas(tmp_path / "cli")
    assert cli.manifest["scoring"] == api.manifest["scoring"]
    key = [("seq_id", "ascending"), ("start", "ascending")]
    assert cli.tokens().sort_by(key).equals(api.tokens().sort_by(key))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "cli")]) == 0
    assert "layers 1, 2" in capsys.readouterr().out
    # one --layer stays a single-layer atlas: no extra columns
    single = _ingest(tmp_path, tiny_esm, name="single", likelihood="none", layer=-1)
    assert single.manifest["scoring"]["layers"] == [2]
    assert single.tokens().column_names[-1] == "embedding"


def test_single_layer_atlases_keep_their_content_keys(tmp_path, tiny_esm):
    """An atlas written before ``layers`` existed resumes without rescoring anything."""
    atlas = _ingest(tmp_path, tiny_esm, likelihood="none", layer=1)
    manifest_path = atlas.path / "atlas.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["scoring"]["layers"]
    manifest_path.write_text(json.dumps(manifest))
    fasta = tmp_path / "atlas.fa"
    report = seqatlas.ingest(fasta, atlas=atlas.path, model=str(tiny_esm), likelihood="none",
                             layer=1, workers=0, progress=False)
    assert report.units_scored == 0 and report.units_skipped == report.units_total > 0
    assert seqatlas.Atlas(atlas.path).tokens().column_names[-1] == "embedding"
    # a different set of layers is a different atlas
    with pytest.raises(seqatlas.SeqAtlasError, match="layers"):
        seqatlas.ingest(fasta, atlas=atlas.path, model=str(tiny_esm), likelihood="none",
                        layer=[1, 2], workers=0, progress=False)


@pytest.mark.parametrize("layer, message", [
    ([2, -1], "repeats layer 2"),
    ([1, 5], "must be in \\[0, 2\\]"),
    ([], "non-empty list"),
    ([1.5], "list of ints"),
])
def test_bad_layers_are_refused(tmp_path, tiny_esm, layer, message):
    with pytest.raises(ConfigError, match=message):
        _ingest(tmp_path, tiny_esm, likelihood="none", layer=layer)
    assert not (tmp_path / "atlas").exists()


def test_cli_bad_layer_is_an_error_not_a_traceback(tmp_path, tiny_esm, capsys):
    fasta = write_fasta(tmp_path / "p.fa", RECORDS)
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model", str(tiny_esm),
                 "--layer", "2", "--layer", "-1", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error:") and "Traceback" not in err
    assert "repeats layer 2" in err
