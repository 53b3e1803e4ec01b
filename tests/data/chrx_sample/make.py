"""Write expected.json: logp of sample.fa in exact, fast (stride 40) and unmasked mode with
seqatlas as of main 27de405 (before the throughput work). Run with that tree first on
PYTHONPATH: git archive 27de405 seqatlas | tar -x -C OLD; PYTHONPATH=OLD python make.py"""
import json
import shutil
import tempfile
from pathlib import Path

import seqatlas

here = Path(__file__).parent
out = {"package": str(Path(seqatlas.__file__).parent.parent.name), "modes": {}}
for mode in ("exact", "fast", "unmasked"):
    atlas = Path(tempfile.mkdtemp()) / mode
    seqatlas.ingest(here / "sample.fa", atlas=atlas, model="dnabert6-tiny", likelihood=mode,
                    embeddings=False, workers=0, progress=False)
    rows = seqatlas.Atlas(atlas).sql(
        "SELECT seq_id, pos, logp, logp_unmasked, entropy FROM positions "
        "ORDER BY seq_id, pos").to_pylist()
    out["modes"][mode] = rows
    shutil.rmtree(atlas.parent)
(here / "expected.json").write_text(json.dumps(out))
