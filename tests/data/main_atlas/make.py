"""Build tests/data/main_atlas with seqatlas as of main 806f1ba (before the restructuring)."""
import json, random, shutil, sys
from pathlib import Path
import seqatlas
from seqatlas.atlas import Atlas

out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
rng = random.Random(7)
def rand(n): return "".join(rng.choice("ACGT") for _ in range(n))
motif = rand(40)
s1 = rand(60) + motif + rand(50) + motif + rand(60) + "N" * 60 + rand(40)
s2 = rand(90) + "acgtacgtacgtacgtacgt" + rand(50)
s3 = rand(120) + motif[:30] + rand(40)
(out / "inputs").mkdir()
(out / "inputs" / "first.fa").write_text(f">chrA first record\n{s1}\n>chrB\n{s2}\n")
(out / "inputs" / "second.fa").write_text(f">chrC the extension\n{s3}\n")
(out / "inputs" / "repeats.bed").write_text(
    "chrA\t60\t100\tmotif_a\t5\t+\nchrA\t150\t190\tmotif_a\t5\t+\nchrB\t90\t110\t(ACGT)n\t3\t.\n")
atlas = out / "atlas"
seqatlas.ingest(out / "inputs" / "first.fa", atlas=atlas, model="dnabert6-tiny",
                likelihood="fast", strands="both", workers=0, progress=False, layer=[-1, 1])
seqatlas.annotate(out / "inputs" / "repeats.bed", atlas=atlas)
expected = {}
a = Atlas(atlas)
expected["anomalies"] = a.anomalies(z=1.5).to_pylist()
expected["enrichment"] = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                          for r in a.enrichment(by="name", z=1.5).to_pylist()]
expected["sql"] = a.sql("SELECT seq_id, count(*) AS n, round(sum(logp), 4) AS s, "
                        "count(copy_offset) AS copies FROM positions GROUP BY seq_id ORDER BY seq_id").to_pylist()
from seqatlas.index import build_index
build_index(atlas, name="default", type="flat")
a = Atlas(atlas)
expected["knn"] = a.knn(kmer="ACGTAC", k=5).to_pylist()
# what extending it with today's main gives
ext = out / "extended"
shutil.copytree(atlas, ext)
seqatlas.ingest(out / "inputs" / "second.fa", atlas=ext, model="dnabert6-tiny",
                likelihood="fast", strands="both", workers=0, progress=False, layer=[-1, 1])
m = json.loads((ext / "atlas.json").read_text())
expected["extended_parts"] = {t: sorted(p) for t, p in m["parts"].items()}
expected["extended_units"] = sorted(m["units"])
e = Atlas(ext)
expected["extended_positions_c"] = e.sql("SELECT pos, ref, logp, logp_rc, entropy, rank, copy_offset FROM positions WHERE seq_id='chrC' ORDER BY pos").to_pylist()
shutil.rmtree(ext)
(out / "expected.json").write_text(json.dumps(expected, indent=1, default=str))
print(json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in expected.items()}, default=str)[:2000])
