"""``seqatlas plot embedding`` and the report's pooled section: pooled vectors (made here
with numpy from the stored token embeddings) projected on their principal components equal
an independent SVD, coloured and filtered by SQL through the sandbox, with clear errors, and
the atlas left byte-identical."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from seqatlas import plot, schema
from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, QueryError
from seqatlas.html_report import report
from seqatlas.plot.projection import OTHER, NULL, categories, pooled_projection
from seqatlas.store import AtlasReader, AtlasWriter
from tests.embedding_data import make_token_atlas, random_dna

DIM = 16
BIN = 200
# family=kinase proteins sit at +3 along dimension 0, family=globin ones at -3
PROTEINS = {f"P{i}": ("kinase" if i % 2 else "globin", 40 + 9 * i) for i in range(8)}
# (seq_id, start, end, class); c1's bin 1 (200-400) holds 50 bases of LINE and 170 of SINE
REPEATS = [("c1", 0, 250, "LINE"), ("c1", 230, 400, "SINE"), ("c1", 600, 650, "LINE"),
           ("c1", 620, 800, "Simple_repeat"), ("c2", 1000, 1400, "LTR")]


def _table(arrow_schema: pa.Schema, columns: dict) -> pa.Table:
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in arrow_schema],
                                schema=arrow_schema)


def _vectors(matrix: np.ndarray) -> pa.Array:
    matrix = np.asarray(matrix, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float16()),
                                             matrix.shape[1])


def _token_vectors(seq_index: int, family: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seq_index)
    vectors = rng.normal(0.0, 0.3, (n, DIM))
    vectors[:, 0] += 3.0 if family == "kinase" else -3.0
    vectors[:, 1] += 0.2 * seq_index
    return vectors


def make_protein_atlas(path: Path) -> Path:
    """Tokens one per residue with embeddings of layers 6 and 3 (layer 3: the negation),
    and descriptions saying each protein's family."""
    model = {"name": "synthetic", "source": "directory", "path": None, "model_type": "esm",
             "parameters": 0, "weights_sha256": "0" * 64, "hidden_size": DIM, "num_layers": 6,
             "tokenizer": {"family": "single"}}
    scoring = {"likelihood": "exact", "embeddings": True, "embedding_dtype": "float16",
               "layer": 6, "layers": [6, 3], "strands": "forward", "window": 100,
               "overlap": 25}
    token_schema = schema.tokens_schema(DIM, extra_layers=[3])
    rng = np.random.default_rng(7)
    with AtlasWriter(path, kind="protein", model=model, scoring=scoring) as writer:
        offset = 0
        for ordinal, (seq_id, (family, n)) in enumerate(PROTEINS.items()):
            residues = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n))
            writer.commit(hashlib.sha256(b"s" + seq_id.encode()).hexdigest(), {
                "sequences": _table(schema.SEQUENCES, {
                    "seq_id": [seq_id], "ordinal": [ordinal], "length": [n],
                    "description": [f"{family.title()} protein family={family} n={n}"],
                    "source": ["synthetic"], "sha1": [""], "global_start": [offset],
                    "token_offset": [offset]})})
            pos = np.arange(n)
            vectors = _token_vectors(ordinal, family, n)
            tokens = {"token_id": offset + pos, "seq_id": [seq_id] * n, "start": pos,
                      "end": pos + 1, "token": list(residues), "embedding": _vectors(vectors),
                      "embedding_layer_3": _vectors(-vectors)}
            positions = {f.name: [None] * n for f in schema.POSITIONS}
            positions.update({"seq_id": [seq_id] * n, "pos": pos, "ref": list(residues),
                              "soft_masked": [False] * n, "logp": -(pos % 7) / 10.0})
            writer.commit(hashlib.sha256(b"t" + seq_id.encode()).hexdigest(),
                          {"positions": _table(schema.POSITIONS, positions),
                           "tokens": _table(token_schema, tokens)})
            offset += n
    return path


def pool_tokens(path: Path, *, bin: int = 0, layers: tuple[int, ...] = (6, 3)) -> Path:
    """Mean pooled rows of the stored token embeddings, per sequence (``bin`` 0) or per bin
    of ``bin`` bases by token start, committed with the manifest's pooling settings."""
    reader = AtlasReader(path)
    stored = reader.manifest.scoring.layers
    tokens = reader.tokens().sort_by([("seq_id", "ascending"), ("start", "ascending")])
    sequences = {r["seq_id"]: r for r in reader.sequences().to_pylist()}
    rows: dict[str, list] = {f.name: [] for f in reader.manifest.pooled_schema()}
    for layer in layers:
        column = tokens[schema.layer_column(stored, layer)].combine_chunks()
        matrix = np.asarray(column.flatten().to_numpy(zero_copy_only=False),
                            dtype=np.float32).reshape(tokens.num_rows, -1)
        seq_ids = np.array(tokens["seq_id"].to_pylist())
        starts = tokens["start"].to_numpy()
        for seq_id, info in sequences.items():
            mine = seq_ids == seq_id
            edges = [(0, info["length"])] if not bin else \
                [(lo, min(lo + bin, info["length"])) for lo in range(0, info["length"], bin)]
            for lo, hi in edges:
                chosen = mine & (starts >= lo) & (starts < hi)
                rows["seq_id"].append(seq_id)
                rows["start"].append(lo)
                rows["end"].append(hi)
                rows["level"].append("bin" if bin else "sequence")
                rows["pooling"].append("mean")
                rows["layer"].append(layer)
                rows["tokens"].append(int(chosen.sum()))
                rows["pool_id"].append(info["token_offset"] + lo)
                rows["vector"].append(matrix[chosen].mean(axis=0))
    rows["vector"] = _vectors(np.stack(rows["vector"]))
    table = _table(reader.manifest.pooled_schema(), rows)
    with AtlasWriter(path) as writer:
        writer.commit("pool" * 6, {"pooled": table}, unit={"stage": "pool"})
        writer.set_pooling({"bin": bin, "poolings": ["mean"], "layers": list(layers)})
    return path


@pytest.fixture(scope="module")
def proteins(tmp_path_factory) -> Path:
    return pool_tokens(make_protein_atlas(tmp_path_factory.mktemp("emb") / "proteins"))


@pytest.fixture(scope="module")
def unpooled(tmp_path_factory) -> Path:
    return make_protein_atlas(tmp_path_factory.mktemp("emb") / "unpooled")


def _dna_embed(layer, texts, ids):
    ids = np.asarray(ids, dtype=np.float64)
    return np.stack([np.sin(ids * (k + 1) / 97.0) + 0.1 * k for k in range(8)], axis=1)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    """DNA, two sequences of 1,300 and 1,500 bases pooled per 200-base bin, with repeats
    and an in-context copy (not a repeat class) over c2's first bin."""
    path = make_token_atlas(tmp_path_factory.mktemp("emb") / "genome",
                            {"c1": random_dna(1300, 1), "c2": random_dna(1500, 2)},
                            _dna_embed, dim=8, repeats=REPEATS)
    copy = _table(schema.REPEATS, {"seq_id": ["c2"], "start": [0], "end": [200],
                                   "strand": ["+"], "name": ["copy"],
                                   "class": ["in_context_copy"], "family": ["copy"],
                                   "source": [schema.COPY_REPEAT_SOURCE], "score": [None]})
    with AtlasWriter(path) as writer:
        writer.commit("c" * 24, {"repeats": copy})
    return pool_tokens(path, bin=BIN, layers=(6,))


def _stored(path: Path, layer: int = 6) -> tuple[list[int], np.ndarray]:
    """pool_ids and float64 vectors of the stored mean pooled rows of ``layer``, by pool_id."""
    table = AtlasReader(path).pooled().filter(
        pa.compute.equal(pa.compute.field("layer"), layer)).sort_by("pool_id")
    vectors = np.asarray(table["vector"].combine_chunks().flatten().to_numpy(
        zero_copy_only=False), dtype=np.float64).reshape(table.num_rows, -1)
    return table["pool_id"].to_pylist(), vectors


def _reference_pca(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2], s[:2] ** 2 / (s ** 2).sum()


def _assert_same_up_to_sign(coords: np.ndarray, reference: np.ndarray) -> None:
    for k in range(2):
        sign = np.sign(coords[:, k] @ reference[:, k]) or 1.0
        np.testing.assert_allclose(coords[:, k] * sign, reference[:, k], atol=1e-4)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- PCA ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["proteins", "genome"])
def test_coordinates_equal_an_independent_svd_of_the_stored_vectors(fixture, request):
    path = request.getfixturevalue(fixture)
    projection = pooled_projection(path)
    ids, vectors = _stored(path)
    reference, explained = _reference_pca(vectors)
    assert projection.table["pool_id"].to_pylist() == ids
    coords = np.column_stack([projection.table[c].to_numpy() for c in ("pc1", "pc2")])
    _assert_same_up_to_sign(coords, reference)
    np.testing.assert_allclose(projection.explained, explained, atol=1e-6)
    assert projection.layer == 6 and projection.pooling == "mean"
    assert projection.dimensions == vectors.shape[1]
    # the genome has more vectors (15) than dimensions (8), the proteins fewer (8 < 16)
    assert (len(ids), vectors.shape[1]) == ((8, DIM) if fixture == "proteins" else (15, 8))


def test_layer_chooses_the_vectors_and_defaults_to_the_first_pooled(proteins):
    ids, layer3 = _stored(proteins, layer=3)
    projection = pooled_projection(proteins, layer=3)
    assert projection.layer == 3
    coords = np.column_stack([projection.table[c].to_numpy() for c in ("pc1", "pc2")])
    _assert_same_up_to_sign(coords, _reference_pca(layer3)[0])
    default = pooled_projection(proteins)
    assert default.layer == 6
    # layer 3 stores the negated vectors: the same projection, each axis flipped or not
    _assert_same_up_to_sign(coords, np.column_stack(
        [default.table[c].to_numpy() for c in ("pc1", "pc2")]))


def test_vectors_pooled_by_seqatlas_pool_project_alike(unpooled, proteins, tmp_path):
    import shutil

    import seqatlas

    path = tmp_path / "pooled_by_seqatlas"
    shutil.copytree(unpooled, path)
    seqatlas.pool(path)
    ids, vectors = _stored(path)
    mine_ids, mine = _stored(proteins)
    assert ids == mine_ids
    np.testing.assert_allclose(vectors, mine, atol=1e-2)  # both float16 means
    projection = pooled_projection(path, color="seq_id")
    coords = np.column_stack([projection.table[c].to_numpy() for c in ("pc1", "pc2")])
    _assert_same_up_to_sign(coords, _reference_pca(vectors)[0])
    assert projection.table["color"].to_pylist() == list(PROTEINS)


# -- colour and filter ---------------------------------------------------------------------

def test_a_sql_colour_gives_each_point_its_category_and_the_groups_split_on_pc1(proteins,
                                                                               tmp_path):
    expression = r"regexp_extract(description, 'family=(\w+)', 1)"
    projection = pooled_projection(proteins, color=expression)
    rows = projection.table.to_pylist()
    assert [r["color"] for r in rows] == [PROTEINS[r["seq_id"]][0] for r in rows]
    signs = {family: {np.sign(r["pc1"]) for r in rows if r["color"] == family}
             for family in ("kinase", "globin")}
    assert len(signs["kinase"]) == len(signs["globin"]) == 1
    assert signs["kinase"] != signs["globin"]
    assert projection.explained[0] > 0.8 and not projection.numeric
    figure = plot.embedding(proteins, projection=projection, output=tmp_path / "p.png",
                            size=(500, 400))
    ax = next(a for a in figure.axes if a.get_label() == "embedding")
    drawn = {c.get_gid(): c.get_offsets() for c in ax.collections}
    assert set(drawn) == {"category:kinase", "category:globin"}
    for family in ("kinase", "globin"):
        expected = [(r["pc1"], r["pc2"]) for r in rows if r["color"] == family]
        np.testing.assert_allclose(np.asarray(drawn[f"category:{family}"]), expected)
    assert ax.get_xlabel() == f"PC1 ({100 * projection.explained[0]:.1f}% of variance)"
    assert ax.get_ylabel() == f"PC2 ({100 * projection.explained[1]:.1f}% of variance)"
    title = figure.get_suptitle()
    assert "PCA of 8 pooled vectors" in title and "mean pooling, layer 6" in title
    assert _png_size(tmp_path / "p.png") == (500, 400)


def test_a_numeric_colour_gets_a_colour_bar(proteins):
    projection = pooled_projection(proteins, color="length")
    assert projection.numeric
    assert projection.table["color"].to_pylist() == [
        PROTEINS[s][1] for s in projection.table["seq_id"].to_pylist()]
    figure = plot.embedding(proteins, projection=projection, size=(500, 400))
    assert any(a.get_label() == "<colorbar>" for a in figure.axes)
    with pytest.raises(ConfigError, match="color apply only when the projection is computed"):
        plot.embedding(proteins, projection=projection, color="length")


def _top_class(seq_id: str, lo: int, hi: int) -> tuple[str | None, float | None]:
    """The class whose REPEATS cover the most bases of [lo, hi), and that share of it."""
    cover: dict[str, int] = {}
    for repeat_seq, start, end, name in REPEATS:
        bases = min(end, hi) - max(start, lo)
        if repeat_seq == seq_id and bases > 0:
            cover[name] = cover.get(name, 0) + bases
    if not cover:
        return None, None
    top = min(cover, key=lambda c: (-cover[c], c))
    return top, cover[top] / (hi - lo)


def test_repeat_class_is_the_class_covering_most_of_each_bin(genome):
    projection = pooled_projection(genome, color="repeat_class")
    fractions = pooled_projection(genome, color="repeat_fraction").table
    assert projection.table.num_rows == fractions.num_rows == 15
    for row, fraction in zip(projection.table.to_pylist(), fractions["color"].to_pylist()):
        expected, share = _top_class(row["seq_id"], row["start"], row["end"])
        assert row["color"] == expected, row
        assert fraction == pytest.approx(share) if share is not None else fraction is None
    by_bin = {(r["seq_id"], r["start"]): r["color"] for r in projection.table.to_pylist()}
    assert by_bin[("c1", 200)] == "SINE" and by_bin[("c1", 600)] == "Simple_repeat"
    assert by_bin[("c2", 0)] is None  # the in-context copy is not a repeat class


def test_where_filters_the_projected_rows(proteins, genome):
    projection = pooled_projection(proteins, where="length > 60")
    expected = sorted(s for s, (_, n) in PROTEINS.items() if n > 60)
    assert sorted(projection.table["seq_id"].to_pylist()) == expected
    assert projection.matched == len(expected) == projection.table.num_rows
    _, vectors = _stored(proteins)
    ids = AtlasReader(proteins).pooled().filter(
        pa.compute.equal(pa.compute.field("layer"), 6)).sort_by("pool_id")
    keep = np.isin(ids["seq_id"].to_pylist(), expected)
    coords = np.column_stack([projection.table[c].to_numpy() for c in ("pc1", "pc2")])
    _assert_same_up_to_sign(coords, _reference_pca(vectors[keep])[0])
    bins = pooled_projection(genome, where="repeat_class IS NOT NULL", color="seq_id")
    covered = [(s, lo) for s, n in (("c1", 1300), ("c2", 1500)) for lo in range(0, n, BIN)
               if _top_class(s, lo, min(lo + BIN, n))[0] is not None]
    assert list(zip(bins.table["seq_id"].to_pylist(), bins.table["start"].to_pylist())) \
        == covered == [("c1", 0), ("c1", 200), ("c1", 600), ("c2", 1000), ("c2", 1200)]
    assert bins.table["color"].to_pylist() == [s for s, _ in covered]


def test_max_vectors_thins_to_every_nth_by_pool_id(genome):
    ids, _ = _stored(genome)
    projection = pooled_projection(genome, max_vectors=5)
    assert projection.stride == 3 and projection.matched == len(ids) == 15
    assert projection.table["pool_id"].to_pylist() == ids[::3]
    figure = plot.embedding(genome, projection=projection, size=(400, 300))
    assert "PCA of 5 pooled vectors" in figure.get_suptitle()
    assert "1 in 3 of the 15 vectors (by pool_id)" in figure.get_suptitle()
    assert "one per 200-base bin" in figure.get_suptitle()


def test_categories_keep_the_most_frequent_and_call_the_rest_other():
    drawn, order = categories(["a", "b", "a", None, "c", "b", "a", "d"], 2)
    assert drawn == ["a", "b", "a", NULL, OTHER, "b", "a", OTHER]
    assert order == ["a", "b", OTHER, NULL]
    drawn, order = categories([1, 2, 2], 5)
    assert drawn == ["1", "2", "2"] and order == ["2", "1"]


# -- the command line ------------------------------------------------------------------------

def test_the_command_writes_a_png_of_the_size_asked_and_the_coordinates(proteins, tmp_path,
                                                                        capsys):
    before = _tree_hash(proteins)
    out, table = tmp_path / "pca.png", tmp_path / "pca.tsv"
    expression = r"regexp_extract(description, 'family=(\w+)', 1)"
    code = main(["plot", "embedding", "--atlas", str(proteins), "-o", str(out), "--color",
                 expression, "--where", "length > 40", "--coordinates", str(table),
                 "--width", "640", "--height", "480"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"Wrote {out} (640x480 px, PNG)" in err and str(table) in err
    assert _png_size(out) == (640, 480)
    written = pacsv.read_csv(table, parse_options=pacsv.ParseOptions(delimiter="\t"))
    library = pooled_projection(proteins, color=expression, where="length > 40").table
    assert written.column_names == library.column_names
    assert written["seq_id"].to_pylist() == library["seq_id"].to_pylist() == \
        [s for s, (_, n) in PROTEINS.items() if n > 40]
    assert written["color"].to_pylist() == library["color"].to_pylist()
    np.testing.assert_allclose(written["pc1"].to_numpy(), library["pc1"].to_numpy())
    assert _tree_hash(proteins) == before  # readers never write into the atlas
    svg = tmp_path / "pca.svg"
    assert main(["plot", "embedding", "--atlas", str(proteins), "-o", str(svg), "--layer",
                 "3", "--pooling", "mean"]) == 0
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert _tree_hash(proteins) == before


@pytest.mark.parametrize("args, says", [
    (["--layer", "4"], r"layer 4 is not pooled in .* \(pooled layers: 6, 3\); give --layer"),
    (["--pooling", "bos"], r"pooling 'bos' is not stored in .* \(stored: mean\)"),
    (["--color", "no_such_column"], r"--color 'no_such_column' cannot be evaluated over the "
                                    r"pooled rows .*no_such_column.*repeat_class"),
    (["--where", "length >"], r"--where 'length >' cannot be evaluated"),
    (["--where", "true; DROP TABLE x"], r"--where must be one SQL condition"),
    (["--color", "1) AS c FROM sequences"], r"--color closes a parenthesis it did not open"),
    (["--where", "length < 50"], r"2 pooled vectors of layer 6, mean pooling pass --where "
                                 r"'length < 50' .*PCA needs at least 3"),
    (["--max-categories", "0"], r"--max-categories must be a whole number from 1 to 20"),
])
def test_bad_options_exit_1_with_an_error_and_no_traceback(proteins, tmp_path, capsys, args,
                                                           says):
    before = _tree_hash(proteins)
    out = tmp_path / "x.png"
    assert main(["plot", "embedding", "--atlas", str(proteins), "-o", str(out), *args]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("Error: "), captured.err
    assert re.search(says, captured.err.replace("\n", " ")), captured.err
    assert "Traceback" not in captured.err + captured.out and not out.exists()
    assert _tree_hash(proteins) == before


def test_an_atlas_without_pooled_rows_says_how_to_make_them(unpooled, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["plot", "embedding", "--atlas", str(unpooled), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {unpooled} has no pooled embeddings")
    assert f"seqatlas pool --atlas {unpooled}" in err and not out.exists()
    with pytest.raises(ConfigError, match="no pooled embeddings"):
        pooled_projection(unpooled)
    with pytest.raises(QueryError, match="--color has an unterminated ' quote"):
        pooled_projection(unpooled, color="'x")


# -- the report ------------------------------------------------------------------------------

def _section(text: str, name: str) -> str:
    match = re.search(rf'<section id="a0-{name}" data-section="{name}">(.*?)</section>', text,
                      re.S)
    assert match, f"no {name} section"
    return match.group(1)


def test_the_report_shows_the_pooled_projection(proteins, tmp_path):
    output = tmp_path / "r.html"
    result = report(proteins, output=output)
    assert "pooled" in result["atlases"][str(proteins)]["sections"]
    section = _section(output.read_text(), "pooled")
    assert "<h2>Pooled embeddings</h2>" in section and "<img" in section
    projection = pooled_projection(proteins, color="nullif(split_part(trim(description), "
                                                    "' ', 1), '')")
    assert "<th>vectors</th><td>8</td>" in section
    assert f"<td>{100 * projection.explained[0]:.1f}%</td>" in section
    assert sorted(set(projection.table["color"].to_pylist())) == ["Globin", "Kinase"]
    assert "pooled vectors of layers 6, 3 (mean pooling); shown: layer 6, mean" in section


def test_the_report_says_how_to_pool_an_atlas_without_pooled_rows(unpooled, tmp_path):
    output = tmp_path / "r.html"
    result = report(unpooled, output=output)
    assert "pooled" in result["atlases"][str(unpooled)]["sections"]
    section = _section(output.read_text(), "pooled")
    assert "No pooled embeddings" in section and "<img" not in section
    assert f"<code>seqatlas pool --atlas {unpooled}</code>" in section
