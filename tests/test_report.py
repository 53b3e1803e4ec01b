"""The HTML report (seqatlas.html_report): sections for what each atlas holds, tables equal
to the library's own results, everything inlined; opened in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seqatlas.cli.main import main
from seqatlas.errors import ConfigError, InputError
from seqatlas.html_report import SECTIONS, report
from seqatlas.index.build import build_index
from seqatlas.query import AnomalyParams, enrichment
from seqatlas.query.per_sequence import sequence_summary
from tests.embedding_data import make_token_atlas, one_hot, random_dna
from tests.query_data import add_ablations, doubling_table, make_atlas

NETWORK = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|ftp:|//)""", re.I)


class _Document(HTMLParser):
    """Sections (id, data-section), table cells per section, image sources and links."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self.cells: dict[str, list[list[str]]] = {}
        self._section = None
        self._row = None
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["id"]
            self.sections[attrs["id"]] = attrs["data-section"]
            self.cells[attrs["id"]] = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("a", "link", "script"):
            self.links.append(attrs.get("href") or attrs.get("src") or "")
        elif tag == "tr" and self._section:
            self._row = []
            self.cells[self._section].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._in_cell = True
            self._row.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._in_cell:
            self._row[-1] += data


def _parse(text: str) -> _Document:
    document = _Document()
    document.feed(text)
    return document


@pytest.fixture(scope="module")
def scored_atlas(tmp_path_factory) -> Path:
    """Scores with two unlikely runs, one inside a repeat and at in-context copies, and
    ablations at the copies."""
    root = tmp_path_factory.mktemp("report_scored")
    rng = np.random.default_rng(4)
    sequences = {"chrA": random_dna(600, 1), "chrB": random_dna(300, 2)}
    scores = {s: rng.normal(-1.4, 0.05, len(r)).astype(np.float32)
              for s, r in sequences.items()}
    scores["chrA"][100:110] = -6.0
    scores["chrB"][50:56] = -6.0
    copies = {s: np.zeros(len(r), dtype=int) for s, r in sequences.items()}
    copies["chrA"][100:110] = 200
    path = make_atlas(root / "scored", sequences, scores, copies=copies,
                      repeats=[("chrA", 95, 115, "(CA)n", "Simple_repeat", "Simple_repeat"),
                               ("chrA", 400, 450, "L1", "LINE", "L1"),
                               ("chrB", 200, 260, "AluY", "SINE", "Alu")])
    rows = [{"seq_id": "chrA", "pos": p, "target_start": 100, "target_end": 110,
             "partner_start": 300, "partner_end": 310, "control_start": 320,
             "control_end": 330, "control_rule": "nearest", "copy_strand": "+",
             "window_start": 0, "window_end": 600, "method": "mask", "seed": 0,
             "logp_intact": -6.0, "logp_partner": -6.5 - 0.01 * (p - 100),
             "logp_control": -6.1} for p in range(100, 110)]
    return add_ablations(path, rows)


@pytest.fixture(scope="module")
def embedded_atlas(tmp_path_factory) -> Path:
    """Embeddings one-hot by token (so identity agreement is 1) and an IVF index."""
    root = tmp_path_factory.mktemp("report_embedded")
    vocabulary = ["A", "C", "G", "T"]
    path = make_token_atlas(root / "embedded", {"s1": random_dna(1500, 5),
                                                "s2": random_dna(1500, 6)},
                            lambda layer, texts, ids: one_hot(texts, vocabulary)
                            + 0.01 * np.sin(ids)[:, None], dim=4)
    build_index(path, name="ivf", type="ivf-flat", metric="l2", nlist=8)
    return path


@pytest.fixture(scope="module")
def doubling_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("doubling") / "doubling.parquet"
    pq.write_table(doubling_table(), path)
    return path


@pytest.fixture(scope="module")
def written(scored_atlas, embedded_atlas, doubling_file, tmp_path_factory) -> tuple:
    output = tmp_path_factory.mktemp("report_out") / "report.html"
    result = report([scored_atlas, embedded_atlas], output=output, doubling=doubling_file,
                    top_regions=2)
    return output, result


def test_each_atlas_shows_the_sections_it_holds_and_only_those(written, scored_atlas,
                                                               embedded_atlas):
    output, result = written
    document = _parse(output.read_text())
    assert result["bytes"] == output.stat().st_size
    scored = result["atlases"][str(scored_atlas)]["sections"]
    embedded = result["atlases"][str(embedded_atlas)]["sections"]
    assert scored == ["summary", "sequences", "distribution", "anomalies", "enrichment",
                      "copies"]
    assert embedded == ["summary", "sequences", "distribution", "anomalies", "identity",
                        "indexes", "pooled"]
    assert document.sections == {**{f"a0-{s}": s for s in scored},
                                 **{f"a1-{s}": s for s in embedded}}
    assert set(scored) | set(embedded) == set(SECTIONS)


def test_everything_is_inlined_and_nothing_reaches_the_network(written):
    output, _ = written
    text = output.read_text()
    document = _parse(text)
    assert document.images and all(src.startswith("data:image/png;base64,")
                                   for src in document.images)
    for src in document.images:  # each a whole PNG
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert all(link.startswith("#") for link in document.links)
    assert not NETWORK.search(text) and "<script" not in text and "@import" not in text
    assert "url(" not in text


def _rows(document: _Document, section: str) -> list[list[str]]:
    return document.cells[section]


def test_the_tables_hold_what_the_library_computes(written, scored_atlas, embedded_atlas):
    output, _ = written
    document = _parse(output.read_text())
    facts = {row[0]: row[1] for row in _rows(document, "a0-summary") if len(row) == 2}
    assert facts["model"] == "synthetic" and facts["weights sha256"] == "0" * 64
    assert facts["likelihood"] == "exact" and facts["kind"] == "dna"
    tables = {row[0]: row[1:] for row in _rows(document, "a0-summary") if len(row) == 4}
    assert tables["positions"][0] == "900" and tables["ablations"][0] == "10"
    header, *rows = _rows(document, "a0-sequences")
    summary = sequence_summary(scored_atlas)
    assert header[:3] == ["seq_id", "length", "scored"]
    assert [r[0] for r in rows] == [s["seq_id"] for s in summary] == ["chrA", "chrB"]
    for row, truth in zip(rows, summary):
        cells = dict(zip(header, row))
        assert int(cells["length"].replace(",", "")) == truth["length"]
        assert float(cells["pll"]) == pytest.approx(truth["pll"], rel=1e-3)
        assert float(cells["mean_logp"]) == pytest.approx(truth["mean_logp"], rel=1e-3)
    table = enrichment(scored_atlas, params=AnomalyParams()).to_pylist()
    enriched = [r for r in _rows(document, "a0-enrichment") if r and r[0] != "group"]
    assert [r[0] for r in enriched] == [t["group"] for t in table]
    regions = [r for r in _rows(document, "a0-anomalies")[1:]]
    assert [(r[0], int(r[1]), int(r[2])) for r in regions] == [("chrA", 100, 110),
                                                              ("chrB", 50, 56)]
    copies = _rows(document, "a0-copies")
    header, row = copies[0], copies[1]
    cells = dict(zip(header, row))
    gains = [0.5 + 0.01 * k for k in range(10)]
    assert int(cells["positions"]) == 10 and int(cells["targets"]) == 1
    assert float(cells["mean_icl_gain"]) == pytest.approx(np.mean(gains), rel=1e-3)
    assert float(cells["mean_control_gain"]) == pytest.approx(0.1, rel=1e-3)
    doubling = [r for r in copies if r and r[0] in ("original", "shuffled")]
    assert sorted(r[0] for r in doubling) == ["original", "shuffled"]
    identity = dict(zip(*_rows(document, "a1-identity")[:2]))
    assert float(identity["identity"]) == pytest.approx(1.0)
    indexes = dict(zip(*_rows(document, "a1-indexes")[:2]))
    assert indexes["name"] == "ivf" and indexes["type"] == "ivf-flat"
    assert indexes["setting"].startswith("nprobe=")


def test_the_report_through_the_cli_equals_the_library(scored_atlas, doubling_file, tmp_path,
                                                       capsys):
    output = tmp_path / "cli.html"
    code = main(["report", "--atlas", str(scored_atlas), "-o", str(output), "--doubling",
                 str(doubling_file), "--top-regions", "1"])
    assert code == 0, capsys.readouterr().err
    assert "Wrote" in capsys.readouterr().err
    library = tmp_path / "lib.html"
    report(scored_atlas, output=library, doubling=doubling_file, top_regions=1)
    strip = lambda text: re.sub(r"data:image/png;base64,[^\"]+", "", text)
    assert strip(output.read_text()) == strip(library.read_text())


def test_bad_arguments_are_clear_errors_and_write_nothing(scored_atlas, tmp_path, capsys):
    inside = scored_atlas / "report.html"
    assert main(["report", "--atlas", str(scored_atlas), "-o", str(inside)]) == 1
    err = capsys.readouterr().err
    assert "Error:" in err and "Traceback" not in err and not inside.exists()
    with pytest.raises(InputError, match="no such file"):
        report(scored_atlas, output=tmp_path / "r.html", doubling=tmp_path / "missing.pq")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a probe doubling table"):
        report(scored_atlas, output=tmp_path / "r.html", doubling=tmp_path / "junk.parquet")
    with pytest.raises(ConfigError):
        report(scored_atlas, output=tmp_path / "r.html", top_regions=-1)
    assert main(["report", "--atlas", str(tmp_path / "nowhere"), "-o",
                 str(tmp_path / "r.html")]) == 1
    assert not (tmp_path / "r.html").exists()


# -- a real browser -----------------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


def _browser(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run",
                           "--user-data-dir=" + args[0], *args[1:]], capture_output=True,
                          timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (.ci/run installs "
                    "Debian's chromium package with apt-get)")
def test_the_report_renders_in_headless_chromium(written, tmp_path):
    from PIL import Image

    output, result = written
    url = output.resolve().as_uri()
    shot = tmp_path / "shot.png"
    done = _browser(str(tmp_path / "profile"), f"--screenshot={shot}",
                    "--window-size=1200,2400", url)
    assert shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.01  # text and plots, not blank
    dom = _browser(str(tmp_path / "profile2"), "--dump-dom", url).stdout.decode()
    document = _parse(dom)
    expected = {f"a{n}-{s}" for n, a in enumerate(result["atlases"].values())
                for s in a["sections"]}
    assert set(document.sections) == expected
    assert len(document.images) == output.read_text().count("<img")
    assert not NETWORK.search(dom)


def test_an_atlas_without_scores_shows_no_score_sections(tmp_path):
    atlas = make_atlas(tmp_path / "unscored", {"s": "ACGT" * 10},
                       {"s": np.full(40, np.nan, dtype=np.float32)})
    result = report(atlas, output=tmp_path / "r.html")
    assert result["atlases"][str(atlas)]["sections"] == ["summary", "sequences"]
    header, row = _rows(_parse((tmp_path / "r.html").read_text()), "a0-sequences")
    assert dict(zip(header, row))["scored"] == "0"


def test_sequence_names_are_escaped_not_markup(tmp_path):
    name = "<script>alert(1)</script>&x"
    rng = np.random.default_rng(0)
    values = rng.normal(-1.4, 0.05, 200).astype(np.float32)
    values[10:15] = -8.0
    atlas = make_atlas(tmp_path / "odd", {name: random_dna(200, 3)}, {name: values})
    output = tmp_path / "r.html"
    report(atlas, output=output)
    text = output.read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;x" in text
    document = _parse(text)
    assert _rows(document, "a0-sequences")[1][0] == name
    assert _rows(document, "a0-anomalies")[1][0] == name


def test_an_atlas_with_several_probe_methods_reports_the_first_and_says_so(scored_atlas,
                                                                           tmp_path):
    import shutil

    atlas = tmp_path / "two_methods"
    shutil.copytree(scored_atlas, atlas)
    add_ablations(atlas, [{"seq_id": "chrA", "pos": 100, "target_start": 100,
                           "target_end": 110, "partner_start": 300, "partner_end": 310,
                           "control_start": 320, "control_end": 330,
                           "control_rule": "nearest", "copy_strand": "+", "window_start": 0,
                           "window_end": 600, "method": "shuffle", "seed": 0,
                           "logp_intact": -6.0, "logp_partner": -7.0, "logp_control": -6.2}])
    output = tmp_path / "r.html"
    result = report(atlas, output=output)
    assert "anomalies" in result["atlases"][str(atlas)]["sections"]
    text = output.read_text()
    assert "several methods (mask, shuffle)" in text and "<code>mask</code>" in text
    chosen = tmp_path / "shuffle.html"
    assert main(["report", "--atlas", str(atlas), "-o", str(chosen), "--ablation-method",
                 "shuffle"]) == 0
    assert "several methods" not in chosen.read_text()
