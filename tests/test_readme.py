"""The README stays honest: its set-up commands match CI and its usage snippets run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from seqatlas.examples import demo_dna, demo_fasta
from seqatlas.fasta import read_fasta

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(section: str, language: str) -> list[str]:
    start = README.index(section)
    end = README.find("\n## ", start + 1)
    text = README[start : end if end > 0 else None]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = _blocks("## Set up on a fresh machine", "bash")
    assert len(setup) == 2
    install_demo, install_test = (b.strip() for b in setup)
    assert install_demo.endswith("seqatlas demo") and "pytest" in install_test
    assert install_test in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_usage_snippets_run(tmp_path):
    import gzip

    records = list(read_fasta(demo_fasta(), kind="protein"))[:3]
    (tmp_path / "proteins.fa").write_text(
        "".join(f">{r.id} {r.description}\n{r.sequence.decode()}\n" for r in records))
    (chrx,) = read_fasta(demo_dna(), kind="dna")
    with gzip.open(tmp_path / "genome.fa.gz", "wt") as fh:
        fh.write(f">X\n{chrx.sequence[:3000].decode()}\nNNNN\n")
    outputs = []
    for block in _blocks("## Usage", "bash"):
        for line in block.strip().splitlines():
            command = line.split("  #")[0].strip()
            done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    assert "0 unit(s) scored" in outputs[1]  # the re-run had nothing left to do
    assert "positions" in outputs[2] and "antiberty" in outputs[2]
    assert "dnabert6-tiny" in outputs[3] and "overlapping_kmer" in outputs[3]
    assert "3,004 positions" in outputs[4]
    script = "\n".join(_blocks("## Usage", "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    total = sum(len(r.sequence) for r in records)
    assert f"{total} positions" in done.stdout
    assert f"{total} {total} 512" in done.stdout  # positions, tokens, embedding width
    _query_snippets_run(tmp_path)


def _run_lines(section: str, cwd: Path) -> list[str]:
    """Each line of the section's bash blocks run in ``cwd``; their stdout."""
    outputs = []
    for block in _blocks(section, "bash"):
        for line in block.strip().splitlines():
            done = subprocess.run(line, shell=True, cwd=cwd, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    return outputs


def _query_snippets_run(tmp_path):
    """The Queries section, on the genome atlas the Usage section built."""
    import shutil

    if shutil.which("tantan") is None:
        pytest.skip("tantan is not installed (Debian package tantan): Queries snippets skipped")
    outputs = _run_lines("## Queries", tmp_path)
    assert "tantan" in outputs[0]
    # piped: TSV, header and rows only (counts go to stderr)
    assert outputs[1].splitlines()[0] == "ref\tn\tmean" and len(outputs[1].splitlines()) == 5
    regions = outputs[2].splitlines()
    assert {"seq_id", "start", "end"} <= set(regions[0].split("\t")) and len(regions) > 1
    assert outputs[3].startswith('"group","n_inside"')
    assert "Tandem_repeat" in outputs[3]
    bedgraph = (tmp_path / "genome_z.bedgraph").read_text().splitlines()
    assert bedgraph and bedgraph[0].startswith("X\t")
    script = "\n".join(_blocks("## Queries", "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Tandem_repeat" in done.stdout and "odds_ratio" in done.stdout
    _probe_snippets_run(tmp_path)


def _probe_snippets_run(tmp_path):
    """The look-up probe section, on the same genome atlas and proteins."""
    section = "## In-context look-up"
    outputs = _run_lines(section, tmp_path)
    assert "target(s) probed" in outputs[0] and "net_gain" in outputs[0]
    assert "icl" in outputs[1] and "control" in outputs[1]
    assert outputs[2].startswith('"group"') and "mean_net_gain" in outputs[2]
    doubling = (tmp_path / "doubling.csv").read_text().splitlines()
    assert doubling[0].startswith('"seq_id","variant"') and len(doubling) == 1 + 3 * 2
    script = "\n".join(_blocks(section, "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "explained_fraction" in done.stdout and "shuffled" in done.stdout
    _integrity_snippets_run(tmp_path)


def _integrity_snippets_run(tmp_path):
    """verify and repair on the genome atlas: sound, then with a part damaged."""
    import seqatlas

    outputs = _run_lines("### Integrity", tmp_path)
    assert "ok: every part is as committed" in outputs[0]
    atlas = tmp_path / "genome_atlas"
    before = seqatlas.Atlas(atlas).positions()
    part = sorted((atlas / "positions").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-10])
    assert not seqatlas.verify(atlas)["ok"]
    repaired = subprocess.run(["seqatlas", "repair", "--atlas", str(atlas), "--no-progress"],
                              capture_output=True, text=True, timeout=900)
    assert repaired.returncode == 0, repaired.stderr
    assert seqatlas.verify(atlas)["ok"]
    assert seqatlas.Atlas(atlas).positions().equals(before)
    _storage_snippets_run(tmp_path)
    _plot_snippets_run(tmp_path)
    _pooled_snippets_run(tmp_path)


def _pooled_snippets_run(tmp_path):
    """Pooled embeddings and sequence search, on the proteins and a small bin atlas."""
    section = "## Pooled embeddings and sequence search"
    outputs = _run_lines(section, tmp_path)
    protein_hits = [line.split("\t") for line in outputs[0].splitlines()]
    assert [h[:2] for h in protein_hits[1:]] == [["abituzumab|L", "1"], ["abituzumab|L", "2"]]
    assert "abituzumab|L" not in {h[2] for h in protein_hits[1:]}  # its own row left out
    rows = [line.split("\t") for line in outputs[2].splitlines()]
    # 3,004 bases (the last 4 N) in 500-base bins: 6-mers start at 0..2998, so the last
    # bin holding a token is [2500, 3000), with 499 of them
    assert rows == [["level", "bins", "fewest"], ["bin", "6", "499"]]
    hits = [line.split("\t") for line in outputs[3].splitlines()]
    assert hits[0][:5] == ["query", "rank", "seq_id", "start", "end"]
    assert {h[0] for h in hits[1:]} == {"X:0-500"} and len(hits) == 4
    assert all(int(h[3]) >= 1000 for h in hits[1:])  # --where applied before ranking
    fasta_hits = [line.split("\t") for line in outputs[6].splitlines()[1:]]
    # each 1 kb bin of the genome, embedded again, finds its own stored bin first
    assert [(h[0], h[2], h[3], h[5]) for h in fasta_hits] == [
        (f"X:{s}-{s + 1000}", "X", str(s), "1") for s in (0, 1000, 2000)]
    script = "\n".join(_blocks(section, "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "'rows_added': 0" in done.stdout and "'rank': 2" in done.stdout
    # the Embedding index section, on the proteins
    outputs = _run_lines("## Embedding index", tmp_path)
    assert "is up to date" in " ".join(outputs[3].split())  # built just before: nothing new
    listed = " ".join(outputs[4].split())
    assert "default" in listed and "pq" in listed and "seqs" in listed
    script = "\n".join(_blocks("## Embedding index", "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def _storage_snippets_run(tmp_path):
    """The commit log, compaction and region reads, on the genome atlas."""
    import seqatlas

    start = README.index("### Versions, compaction and region reads")
    block = re.search(r"```bash\n(.*?)```", README[start:README.index("\n### ", start + 1)],
                      re.S).group(1)
    atlas = tmp_path / "genome_atlas"
    before = seqatlas.Atlas(atlas).positions().sort_by([("seq_id", "ascending"),
                                                        ("pos", "ascending")])
    outputs = []
    for line in block.strip().splitlines():
        done = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        outputs.append((done.stdout, done.stderr))
    assert "commit unit" in outputs[0][0] and "version" in outputs[0][0]
    assert "positions:" in outputs[1][1] and "-> 1" in outputs[1][1]
    assert outputs[2][0].splitlines() == ["n\tfirst", "1000\t1000"]  # the count: stderr
    lines = (tmp_path / "x.bedgraph").read_text().splitlines()
    assert lines[0].startswith("X\t0\t") and int(lines[-1].split("\t")[2]) <= 1500
    assert seqatlas.Atlas(atlas).positions().equals(before)  # compaction sorted them so


def _plot_snippets_run(tmp_path):
    """The plots and the report, on the genome atlas (repeats, ablations) and the proteins."""
    section = "## Plots and the HTML report"
    _run_lines(section, tmp_path)
    points = (tmp_path / "embedding.tsv").read_text().splitlines()
    assert len(points) == 4 and "pc1" in points[0]  # my_atlas: 3 antibody domains
    assert {line.split("\t")[-1] for line in points[1:]} == {"kappa"}
    for name in ("track.png", "distribution.png", "icl.png", "embedding.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "enrichment.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    html = (tmp_path / "report.html").read_text()
    for section_id in ("a0-summary", "a0-sequences", "a0-anomalies", "a0-enrichment",
                       "a0-copies"):
        assert f'id="{section_id}"' in html, section_id
    script = "\n".join(_blocks(section, "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "robust z" in done.stdout and "'identity'" in done.stdout  # the proteins' embeddings
    _variant_snippets_run(tmp_path)


def _variant_snippets_run(tmp_path):
    """Variant scores on the genome atlas (a stored set, look-up rows) and the proteins."""
    import pyarrow.csv as pacsv

    section = "## Variant effects"
    outputs = _run_lines(section, tmp_path)
    rows = pacsv.read_csv(tmp_path / "variant_scores.tsv",
                          parse_options=pacsv.ParseOptions(delimiter="\t"),
                          convert_options=pacsv.ConvertOptions(strings_can_be_null=True)
                          ).to_pylist()
    assert [r["variant_id"] for r in rows] == ["chrX:852:A>C", "chrX:852:A>G", "rs1",
                                               "X:1500:AC>A"]
    scored, mismatch, indel = rows[0], rows[2], rows[3]
    assert scored["problem"] is None and scored["pos"] == 851 and scored["seq_id"] == "X"
    assert scored["lookup_shift"] == pytest.approx(scored["llr_control"] -
                                                   scored["llr_partner"], abs=1e-6)
    assert "does not match the atlas: it has" in mismatch["problem"]
    assert indel["problem"].startswith("indel")
    assert "chrX:852:A>C" in outputs[2] and "chrX:852:A>G" in outputs[2]
    scan = (tmp_path / "scan.tsv").read_text().splitlines()
    assert len(scan) == 1 + 3 * 10  # X:850-860 is 0-based, half-open
    script = "\n".join(_blocks(section, "python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "llr_joint" in done.stdout


def test_models_snippets_run(tmp_path):
    """The Models section: one checkpoint of each kind, built tiny under the names the
    README uses, ingested by the README's own lines (the adapter detected each time)."""
    import gzip

    import seqatlas
    from tests.test_adapter_carp import make_carp
    from tests.test_adapter_fair_esm import make_esm2
    from tests.test_adapter_gpn import make_gpn
    from tests.test_causal import make_char_gpt

    records = list(read_fasta(demo_fasta(), kind="protein"))[:2]
    (tmp_path / "proteins.fa").write_text(
        "".join(f">{r.id}\n{r.sequence.decode()[:60]}\n" for r in records))
    (chrx,) = read_fasta(demo_dna(), kind="dna")
    with gzip.open(tmp_path / "genome.fa.gz", "wt") as fh:
        fh.write(f">X\n{chrx.sequence[:300].decode()}\n")
    make_esm2(tmp_path / "esm2_t6_8M_UR50D.pt")
    make_carp(tmp_path / "carp_640M.pt")
    make_char_gpt(tmp_path / "dna-gpt")
    make_gpn(tmp_path / "gpn-model")
    outputs = _run_lines("## Models", tmp_path)
    for adapter in ("transformers-causal", "fair-esm", "esmc", "carp", "gpn"):
        assert adapter in outputs[0]
    expected = {"esm_atlas": ("fair-esm", "exact"), "carp_atlas": ("carp", "exact"),
                "gpt_atlas": ("transformers-causal", "causal"), "gpn_atlas": ("gpn", "fast")}
    for name, (adapter, likelihood) in expected.items():
        atlas = seqatlas.Atlas(tmp_path / name)
        assert atlas.manifest.model.extra["adapter"] == adapter
        assert atlas.manifest.scoring.likelihood == likelihood
        count = atlas.sql("select count(logp) as n from positions").to_pylist()[0]["n"]
        assert count > 100
    toml = re.search(r"```toml\n(.*?)```", README[README.index("## Models"):], re.S).group(1)
    assert '[project.entry-points."seqatlas.models"]' in toml
