"""Nearest-neighbour lookup (query knn) and the identity diagnostic (query identity)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import AtlasIndexError, ConfigError, ModelError, QueryError
from seqatlas.index import build_index
from seqatlas.query import identity, knn
from seqatlas.query.neighbours import embed_residues
from tests.conftest import write_fasta
from tests.dna_models import make_overlapping
from tests.embedding_data import make_token_atlas, one_hot, random_dna

SEQS = {"a": random_dna(120, 1), "b": random_dna(90, 2)}
REPEATS = [("a", 10, 30, "Simple"), ("a", 25, 40, "LINE"), ("b", 0, 20, "LINE")]
TWIN = (3, 120 + 7)  # a:3 and b:7 get the same vector


def _random_embed(layer, texts, ids):
    seeds = [TWIN[0] if i == TWIN[1] else int(i) for i in ids]
    return np.stack([np.random.default_rng(s * 10 + layer).normal(size=8) for s in seeds])


@pytest.fixture(scope="module")
def random_atlas(tmp_path_factory):
    path = make_token_atlas(tmp_path_factory.mktemp("knn") / "atlas", SEQS, _random_embed,
                            dim=8, k=3, repeats=REPEATS, parts_per_sequence=2)
    build_index(seqatlas.Atlas(path), name="default", type="flat", metric="ip")
    build_index(seqatlas.Atlas(path), name="cos", type="flat", metric="cosine")
    return path


def _brute(atlas_path, vector, exclude=None) -> list[dict]:
    """Every token, nearest first by inner product with ``vector``, with its join values."""
    tokens = seqatlas.Atlas(atlas_path).tokens()
    x = np.stack(tokens["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    scores = x @ vector
    rows = []
    for i in np.argsort(-scores, kind="stable"):
        row = {c: tokens[c][int(i)].as_py() for c in ("token_id", "seq_id", "start", "end",
                                                      "token")}
        if row["token_id"] == exclude:
            continue
        classes = sorted({c for s, lo, hi, c in REPEATS
                          if s == row["seq_id"] and lo < row["end"] and row["start"] < hi})
        rows.append({**row, "distance": float(scores[i]),
                     "logp": float(np.mean([-(p % 7) / 10 for p in range(row["start"],
                                                                        row["end"])])),
                     "repeat_class": ",".join(classes) or None})
    return rows


def _stored(atlas_path, token_id, column="embedding") -> np.ndarray:
    tokens = seqatlas.Atlas(atlas_path).tokens()
    i = tokens["token_id"].to_pylist().index(token_id)
    return np.asarray(tokens[column][i].as_py(), dtype=np.float32)


def _check(result_rows, expected, query):
    assert [r["rank"] for r in result_rows] == list(range(1, len(expected) + 1))
    for got, want in zip(result_rows, expected):
        assert got["query"] == query
        for column in ("token_id", "seq_id", "start", "end", "token", "repeat_class"):
            assert got[column] == want[column], column
        assert got["distance"] == pytest.approx(want["distance"], rel=1e-4, abs=1e-4)
        assert got["logp"] == pytest.approx(want["logp"], abs=1e-6)


def test_flat_knn_equals_numpy_brute_force(random_atlas):
    result = knn(random_atlas, at=["a:5", "b:40"], k=6)
    assert result.column_names == ["query", "rank", "token_id", "seq_id", "start", "end",
                                   "token", "distance", "logp", "repeat_class"]
    rows = result.to_pylist()
    for q, (query, token_id) in enumerate((("a:5", 5), ("b:40", 160))):
        expected = _brute(random_atlas, _stored(random_atlas, token_id), exclude=token_id)[:6]
        _check(rows[6 * q : 6 * q + 6], expected, query)
    # the hits really carry repeat classes and token means of logp
    every = knn(random_atlas, at="a:20", k=200).to_pylist()
    assert {r["repeat_class"] for r in every} >= {"LINE", "LINE,Simple", "Simple", None}


def test_at_reuses_the_stored_vector_and_leaves_the_token_out(random_atlas):
    for query, twin in ((f"a:{TWIN[0]}", TWIN[1]), ("b:7", TWIN[0])):
        rows = knn(random_atlas, at=query, k=3, index="cos").to_pylist()
        own = TWIN[0] if twin == TWIN[1] else TWIN[1]
        assert rows[0]["token_id"] == twin  # an identical vector: the nearest
        assert rows[0]["distance"] == pytest.approx(1.0, abs=1e-5)  # cosine similarity
        assert rows[1]["distance"] < 0.999
        assert own not in [r["token_id"] for r in rows]
        assert len(rows) == 3
    # the query is the stored float16 vector itself: inner products with it, as stored
    vector = _stored(random_atlas, TWIN[0])
    rows = knn(random_atlas, at=f"a:{TWIN[0]}", k=1).to_pylist()
    assert rows[0]["distance"] == pytest.approx(
        _brute(random_atlas, vector, exclude=TWIN[0])[0]["distance"], rel=1e-6)


@pytest.mark.parametrize("where, keep", [
    ("repeat_class IS NOT NULL", lambda r: r["repeat_class"] is not None),
    ("repeat_class = 'Simple'", lambda r: r["repeat_class"] == "Simple"),
    ("seq_id = 'b' AND \"end\" > 60", lambda r: r["seq_id"] == "b" and r["end"] > 60),
    ("logp < -0.45 OR token LIKE 'A%'", lambda r: r["logp"] < -0.45 or r["token"][0] == "A"),
])
def test_where_returns_k_rows_that_pass(random_atlas, where, keep):
    k = 7
    rows = knn(random_atlas, at="a:5", k=k, where=where).to_pylist()
    expected = [r for r in _brute(random_atlas, _stored(random_atlas, 5), exclude=5)
                if keep(r)][:k]
    assert len(expected) == k
    _check(rows, expected, "a:5")


def test_where_with_too_few_matches_returns_what_exists(random_atlas):
    rows = knn(random_atlas, at="a:5", k=10, where="seq_id = 'b' AND start < 3").to_pylist()
    assert sorted(r["start"] for r in rows) == [0, 1, 2]
    assert knn(random_atlas, at="a:5", k=3, where="token = 'NNN'").num_rows == 0


@pytest.mark.parametrize("where", [
    "1=1); COPY (SELECT 1) TO '{out}'; (",
    "1=1; DROP TABLE tokens",
    "; DROP VIEW tokens",
    "1=1) UNION ALL SELECT * FROM hits_joined WHERE (1=1",
    "1=1 -- trailing comment",
    "1=1 /* comment */",
    "token = 'unterminated",
    "(1=1",
    # quoting the text check cannot follow ($$ and E'' strings): DuckDB's parse tree catches
    "$$'$$ = '' OR 1=1) UNION ALL SELECT * FROM hits_joined WHERE ('x' = $$'$$",
    "E'\\'' = '' OR 1=1) ORDER BY (token = E'\\''",
])
def test_hostile_where_is_refused(random_atlas, tmp_path, where):
    out = tmp_path / "x.csv"
    with pytest.raises(QueryError):
        knn(random_atlas, at="a:5", k=3, where=where.format(out=out))
    assert not out.exists()
    assert knn(random_atlas, at="a:5", k=3).num_rows == 3  # the atlas is untouched


def test_where_cannot_read_outside_the_atlas(random_atlas, capsys):
    with pytest.raises(QueryError, match="sandbox"):
        knn(random_atlas, at="a:5", k=3,
            where="EXISTS (SELECT * FROM read_text('/etc/hostname'))")
    # quotes and semicolons inside literals are fine
    assert knn(random_atlas, at="a:5", k=3, where="token <> 'a;b''c'").num_rows == 3
    code = main(["query", "knn", "--atlas", str(random_atlas), "--at", "a:5",
                 "--where", "1=1; DROP TABLE tokens"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error:") and "Traceback" not in err


def test_cli_matches_api(random_atlas, tmp_path, capsys):
    api = knn(random_atlas, at=["a:5", "b:3"], k=4, where="seq_id = 'b'")
    capsys.readouterr()
    assert main(["query", "knn", "--atlas", str(random_atlas), "--at", "a:5", "--at", "b:3",
                 "-k", "4", "--where", "seq_id = 'b'", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(api.to_pylist()))
    out = tmp_path / "hits.parquet"
    assert main(["query", "knn", "--atlas", str(random_atlas), "--at", "a:5", "--at", "b:3",
                 "-k", "4", "--where", "seq_id = 'b'", "--output", str(out)]) == 0
    assert pq.read_table(out).equals(api)
    assert main(["query", "knn", "--atlas", str(random_atlas), "--at", "a:5", "-k", "2"]) == 0
    assert "a:5" in capsys.readouterr().out


def test_knn_at_and_identity_do_not_import_torch(random_atlas):
    code = ("import sys\nfrom seqatlas.cli.main import main\n"
            f"assert main(['query', 'knn', '--atlas', {str(random_atlas)!r}, '--at', 'a:5', "
            "'--format', 'csv']) == 0\n"
            f"assert main(['query', 'identity', '--atlas', {str(random_atlas)!r}, "
            "'--sample', '20', '--format', 'csv']) == 0\n"
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('"query","rank","token_id"')
    assert '"layer","column","neighbours"' in done.stdout


@pytest.mark.parametrize("options, error, message", [
    ({"at": "a:999"}, ConfigError, "no token starts at 999"),
    ({"at": "a:118"}, ConfigError, "no token starts at 118"),  # a k-mer would run past the end
    ({"at": "zz:1"}, ConfigError, "no sequence 'zz'"),
    ({"at": "a5"}, ConfigError, "SEQ:POS"),
    ({"at": "a:5", "kmer": "ACG"}, ConfigError, "one kind of query"),
    ({}, ConfigError, "one kind of query"),
    ({"at": "a:5", "offset": 1}, ConfigError, "--sequence queries only"),
    ({"at": "a:5", "k": 0}, ConfigError, "positive"),
    ({"at": "a:5", "index": "other"}, AtlasIndexError, "seqatlas index build"),
])
def test_clear_errors(random_atlas, options, error, message):
    with pytest.raises(error, match=message):
        knn(random_atlas, **options)


def test_no_index_and_no_embeddings(tmp_path, capsys):
    from tests.query_data import make_atlas

    path = make_token_atlas(tmp_path / "noindex", SEQS, _random_embed, dim=8, k=3)
    with pytest.raises(AtlasIndexError, match="seqatlas index build"):
        knn(path, at="a:5")
    assert main(["query", "knn", "--atlas", str(path), "--at", "a:5"]) == 1
    assert "seqatlas index build" in capsys.readouterr().err
    bare = make_atlas(tmp_path / "bare", {"s": "ACGTACGT"}, {"s": np.zeros(8)})
    for run in (lambda: knn(bare, kmer="ACG"), lambda: identity(bare)):
        with pytest.raises(ConfigError, match="stores no embeddings"):
            run()
    assert main(["query", "identity", "--atlas", str(bare)]) == 1
    err = capsys.readouterr().err
    assert "stores no embeddings" in err and "Traceback" not in err


# -- k-mer and sequence queries embed with the atlas's own model ------------------------------

@pytest.fixture(scope="module")
def dnabert_atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("dnabert")
    model = make_overlapping(root / "model", k=3)
    fasta = write_fasta(root / "x.fa", {"x": random_dna(60, 5), "y": random_dna(40, 6)})
    seqatlas.ingest(fasta, atlas=root / "atlas", model=str(model), likelihood="unmasked",
                    layer=[1, 2], workers=0, progress=False)
    atlas = seqatlas.Atlas(root / "atlas")
    build_index(atlas, name="default", type="flat", metric="ip")
    build_index(atlas, name="last", type="flat", metric="ip", column="embedding_layer_2")
    return root


def _forward(model_dir, kmers: list[str]):
    """Hidden states of a direct BertForMaskedLM forward of [CLS] kmers [SEP]."""
    import torch
    from transformers import BertForMaskedLM

    vocab = (model_dir / "vocab.txt").read_text().split()
    ids = [vocab.index("[CLS]")] + [vocab.index(k) for k in kmers] + [vocab.index("[SEP]")]
    model = BertForMaskedLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


def test_kmer_vector_is_the_neutral_context_forward(dnabert_atlas):
    from seqatlas.checkpoints.recorded import atlas_model_spec

    atlas = seqatlas.Atlas(dnabert_atlas / "atlas")
    spec = atlas_model_spec(atlas)
    hidden = _forward(dnabert_atlas / "model", ["ACG"])
    for layer in (1, 2):
        np.testing.assert_allclose(embed_residues(spec, ["acg"], layer)[0], hidden[layer][1],
                                   atol=1e-5)
    # longer k-mers: the token nearest the centre; sequences: the one at --offset
    hidden = _forward(dnabert_atlas / "model", ["ACG", "CGT", "GTA"])
    np.testing.assert_allclose(embed_residues(spec, ["ACGTA"], 1)[0], hidden[1][2], atol=1e-5)
    np.testing.assert_allclose(embed_residues(spec, ["ACGTA"], 1, offset=2)[0], hidden[1][3],
                               atol=1e-5)
    np.testing.assert_allclose(embed_residues(spec, ["ACGTA"], 1, offset=4)[0], hidden[1][3],
                               atol=1e-5)  # the last base: only GTA covers it


def test_kmer_knn_searches_with_that_vector(dnabert_atlas):
    path = dnabert_atlas / "atlas"
    hidden = _forward(dnabert_atlas / "model", ["ACG"])
    for index, layer, column in (("default", 1, "embedding"), ("last", 2, "embedding_layer_2")):
        rows = knn(path, kmer="ACG", k=5, index=index).to_pylist()
        tokens = seqatlas.Atlas(path).tokens()
        x = np.stack(tokens[column].to_numpy(zero_copy_only=False)).astype(np.float32)
        scores = x @ hidden[layer][1]
        order = np.argsort(-scores, kind="stable")[:5]
        assert [r["token_id"] for r in rows] == tokens["token_id"].take(order).to_pylist()
        np.testing.assert_allclose([r["distance"] for r in rows], scores[order], rtol=1e-4)
        assert {r["query"] for r in rows} == {"ACG"}
    seq_rows = knn(path, sequence="ACGTA", offset=2, k=3).to_pylist()
    assert {r["query"] for r in seq_rows} == {"ACGTA@2"}


def test_kmer_cli_matches_api(dnabert_atlas, capsys):
    path = dnabert_atlas / "atlas"
    api = knn(path, kmer=["ACG", "TTTA"], k=3)
    capsys.readouterr()
    assert main(["query", "knn", "--atlas", str(path), "--kmer", "ACG", "--kmer", "TTTA",
                 "-k", "3", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(api.to_pylist()))


@pytest.mark.parametrize("options, error, message", [
    ({"kmer": "AC"}, ConfigError, "shorter than one model token"),
    ({"kmer": "ACN"}, ConfigError, "letters the model does not score"),
    ({"kmer": "A" * 40}, ConfigError, "more than the model's context"),
    ({"sequence": "ACGTA", "offset": 9}, ConfigError, "no token covers"),
])
def test_kmer_errors(dnabert_atlas, options, error, message):
    with pytest.raises(error, match=message):
        knn(dnabert_atlas / "atlas", **options)


def test_other_weights_are_refused(dnabert_atlas, tmp_path):
    other = make_overlapping(tmp_path / "other", k=3)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="weights sha256"):
        knn(dnabert_atlas / "atlas", kmer="ACG", model=str(other))


# -- identity vs context ------------------------------------------------------------------

LONG = {"a": random_dna(600, 3), "b": random_dna(400, 4)}
BASES = list("ACGT")


def _next_base(ids) -> list[str]:
    out = []
    for i in ids:
        seq, s = ("a", int(i)) if i < 600 else ("b", int(i) - 600)
        out.append(LONG[seq][s + 1] if s + 1 < len(LONG[seq]) else "-")
    return out


def _layered_embed(layer, texts, ids):
    if layer == 3:  # the token's identity
        return np.pad(one_hot(texts, BASES), ((0, 0), (0, 1)))
    if layer == 5:  # the next token's identity
        return one_hot(_next_base(ids), BASES + ["-"])
    return np.stack([np.random.default_rng(int(i)).normal(size=5) for i in ids])


@pytest.fixture(scope="module")
def layered_atlas(tmp_path_factory):
    return make_token_atlas(tmp_path_factory.mktemp("identity") / "atlas", LONG,
                            _layered_embed, dim=5, k=1, layers=(3, 5, 6), parts_per_sequence=3)


def _chance() -> dict:
    """Chance levels by brute force over the 1000 single-base tokens."""
    tokens = [(seq, s) for seq in LONG for s in range(len(LONG[seq]))]
    n = len(tokens)

    def around(seq, s):
        text = LONG[seq]
        return (text[s + 1] if s + 1 < len(text) else None, text[s - 1] if s else None)

    ctx = [around(*t) for t in tokens]
    square = lambda counts: sum(c * c for c in counts.values()) / n**2  # noqa: E731
    both = Counter((nx, pv) for nx, pv in ctx if nx and pv)
    nxt = Counter(nx for nx, _ in ctx if nx)
    prv = Counter(pv for _, pv in ctx if pv)
    return {"identity": square(Counter(LONG["a"] + LONG["b"])), "next": square(nxt),
            "prev": square(prv), "context": square(nxt) + square(prv) - square(both)}


def test_identity_per_layer(layered_atlas):
    table = identity(layered_atlas, sample=400, k=10, seed=1)
    rows = {r["layer"]: r for r in table.to_pylist()}
    assert list(rows) == [3, 5, 6]
    assert [rows[x]["column"] for x in (3, 5, 6)] == ["embedding", "embedding_layer_5",
                                                      "embedding_layer_6"]
    chance = _chance()
    for row in rows.values():
        assert row["sample"] == 400 and row["k"] == 10
        assert row["neighbours"] == "exact in-memory Flat (cosine)"
        for name in ("identity", "next", "prev", "context"):
            assert row[f"{name}_chance"] == pytest.approx(chance[name], rel=1e-12)
    assert rows[3]["identity"] == 1.0  # one-hot of the token: every neighbour shares it
    # one-hot of the next token: every neighbour shares it, except for the last token of
    # a sequence (no next), which the sample holds with probability 2/1000 each
    assert rows[5]["next"] >= 1 - 2 / 400 and rows[5]["next"] > 0.99
    assert rows[5]["context"] >= rows[5]["next"]
    # random vectors: neighbour texts are independent draws, so over 400 x 10 pairs the
    # fraction's standard deviation is sqrt(p (1 - p) / 4000) < 0.008 for p ~ 0.25; 0.04 is
    # five of them (the sample is seeded, so the test is deterministic)
    for name in ("identity", "next", "prev", "context"):
        assert abs(rows[6][name] - chance[name]) < 0.04, name
    assert abs(rows[3]["next"] - chance["next"]) < 0.04  # identity says nothing of context


def test_one_layer_resolver_for_knn_and_identity(layered_atlas):
    from seqatlas.index.vectors import column_layer, resolve_layer, stored_layers

    atlas = seqatlas.Atlas(layered_atlas)
    assert stored_layers(atlas) == {3: "embedding", 5: "embedding_layer_5",
                                    6: "embedding_layer_6"}
    assert [resolve_layer(atlas, v) for v in (3, 5, 6, -1, -2)] == [3, 5, 6, 6, 5]
    with pytest.raises(ConfigError, match=r"--layer -3: .* stores layer\(s\) 3, 5, 6 only"):
        resolve_layer(atlas, -3)  # layer 4 of the model's 6
    assert column_layer(atlas, "embedding") == 3
    assert column_layer(atlas, "embedding_layer_6") == 6
    assert column_layer(atlas, "embedding_layer_4") is None
    # identity tests the layers in the order given, each once
    rows = identity(layered_atlas, sample=20, k=2, layers=[-1, 6, 3]).to_pylist()
    assert [(r["layer"], r["column"]) for r in rows] == [(6, "embedding_layer_6"),
                                                         (3, "embedding")]


def test_identity_before_any_tokens_is_a_clear_error(tmp_path, capsys):
    empty = make_token_atlas(tmp_path / "atlas", {}, _layered_embed, dim=5, layers=(3,))
    with pytest.raises(AtlasIndexError, match="no tokens yet"):
        identity(empty)
    assert main(["query", "identity", "--atlas", str(empty)]) == 1
    assert "no tokens yet" in capsys.readouterr().err


def test_identity_uses_a_built_index_and_selected_layers(layered_atlas, capsys):
    exact = identity(layered_atlas, sample=300, k=5, layers=[-1]).to_pylist()
    assert [r["layer"] for r in exact] == [6]
    build_index(seqatlas.Atlas(layered_atlas), name="last", type="flat", metric="cosine",
                column="embedding_layer_6")
    indexed = identity(layered_atlas, sample=300, k=5, layers=[6]).to_pylist()[0]
    assert indexed["neighbours"].startswith("index 'last'")
    for name in ("identity", "next", "prev", "context"):
        assert indexed[name] == pytest.approx(exact[0][name])
    named = identity(layered_atlas, sample=300, k=5, index="last").to_pylist()
    assert [r["layer"] for r in named] == [6] and named[0]["identity"] == indexed["identity"]
    with pytest.raises(ConfigError, match="stores layer"):
        identity(layered_atlas, layers=[4])
    with pytest.raises(ConfigError, match="is over 'embedding_layer_6'"):
        identity(layered_atlas, layers=[3], index="last")
    with pytest.raises(AtlasIndexError, match="seqatlas index build"):
        identity(layered_atlas, index="nope")
    capsys.readouterr()
    assert main(["query", "identity", "--atlas", str(layered_atlas), "--sample", "300", "-k",
                 "5", "--layer", "3", "--layer", "6", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    api = identity(layered_atlas, sample=300, k=5, layers=[3, 6])
    assert shown == json.loads(json.dumps(api.to_pylist()))
    assert main(["query", "identity", "--atlas", str(layered_atlas), "--sample", "50",
                 "--format", "table"]) == 0
    shown = capsys.readouterr().out
    assert "1.000 (0.251)" in shown and "column embedding_layer_5" in shown
    assert "neighbours from index 'last'" in shown and "exact in-memory Flat" in shown


@pytest.mark.slow
def test_readme_section_runs(tmp_path):
    """The README's "Nearest k-mers" snippets, on 3 kb of real chrX with dnabert6-tiny."""
    import re
    from pathlib import Path

    from seqatlas.examples import demo_dna
    from seqatlas.fasta import read_fasta

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("## Nearest k-mers")
    section = readme[start : readme.index("\n## ", start + 1)]
    (chrx,) = read_fasta(demo_dna(), kind="dna")
    (tmp_path / "chrx.fa").write_text(f">X\n{chrx.sequence.decode()}\n")
    bash, python = (re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)
                    for lang in ("bash", "python"))
    outputs = []
    for line in bash[0].strip().splitlines():
        done = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    assert seqatlas.Atlas(tmp_path / "dna_atlas").manifest["scoring"]["layers"] == [2, 4]
    hits = outputs[2].splitlines()  # piped: TSV, header and 5 rows
    assert hits[0].split("\t")[:2] == ["query", "rank"] and len(hits) == 6
    assert all(line.startswith("ACGTAC\t") for line in hits[1:])
    csv = outputs[3].splitlines()
    assert csv[0].startswith('"query","rank"') and len(csv) == 6
    assert all(line.startswith('"X:100"') for line in csv[1:])
    assert all(float(line.split(",")[8]) < -0.3 for line in csv[1:])  # the --where held
    assert "identity" in outputs[4] and "embedding_layer_4" in outputs[4]
    done = subprocess.run([sys.executable, "-c", python[0]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "'rank': 5" in done.stdout and "context_chance" in done.stdout
