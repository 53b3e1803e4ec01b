"""probe doubling with the real AntiBERTy on real antibody domains (slow; needs ../shared)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from seqatlas.probe import probe_doubling
from seqatlas.scoring.ablation import corrupt, region_rng

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _domains(n: int) -> dict[str, str]:
    path = DATA / "jain2017_antibodies.fa.gz"
    if not path.exists():
        pytest.skip(f"{path} not found: real antibody domains come with ../shared/data")
    records: dict[str, str] = {}
    name = None
    for line in gzip.open(path, "rt"):
        if line.startswith(">"):
            if len(records) == n:
                break
            name = line[1:].split()[0].replace("|", "_")
            records[name] = ""
        else:
            records[name] += line.strip()
    return records


def _copy1_mean_logp(model, vocab: list[str], construct: str, n: int) -> float:
    """Mean over copy 1 (the first n residues) of log p(residue) with it masked, the
    distribution taken over the 20 amino acids; the model run directly, one mask at a time."""
    import torch

    ids = [vocab.index("[CLS]")] + [vocab.index(c) for c in construct] + [vocab.index("[SEP]")]
    letters = [vocab.index(c) for c in AMINO]
    batch = torch.tensor([ids] * n)
    batch[torch.arange(n), torch.arange(n) + 1] = vocab.index("[MASK]")
    with torch.no_grad():
        logits = model(input_ids=batch).logits[torch.arange(n), torch.arange(n) + 1]
    logp = torch.log_softmax(logits[:, letters].double(), -1)
    true = torch.tensor([AMINO.index(c) for c in construct[:n]])
    return float(logp[torch.arange(n), true].mean())


def test_shuffled_then_doubled_antibody_domains_look_their_copy_up(tmp_path):
    import antiberty
    from transformers import BertForMaskedLM

    domains = _domains(4)
    fasta = tmp_path / "domains.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in domains.items()))
    table = probe_doubling(fasta, model="antiberty", shuffle=True, seed=11, workers=0,
                           progress=False)
    rows = {(r["seq_id"], r["variant"]): r for r in table.to_pylist()}
    shuffled = [r for r in rows.values() if r["variant"] == "shuffled"]
    assert len(shuffled) == 4
    # masking copy 2 costs copy 1 likelihood ...
    assert all(r["icl_gain"] > 0 for r in shuffled)
    # ... and so does masking a same-composition block in its place: the matched control
    # (benchmarks/probe_doubling.py: on 20 domains the two cancel, net_gain about 0)
    assert np.mean([r["control_gain"] for r in shuffled]) > 0.1

    root = Path(antiberty.__file__).parent / "trained_models"
    vocab = root.joinpath("vocab.txt").read_text().split()
    model = BertForMaskedLM.from_pretrained(root / "AntiBERTy_md_smooth",
                                            attn_implementation="eager").eval()
    name = next(iter(domains))
    s = corrupt(domains[name].encode(), 0, len(domains[name]), method="shuffle",
                rng=region_rng(11, "variant", name))[0]
    c = corrupt(s, 0, len(s), method="shuffle", rng=region_rng(11, "control-block", name,
                                                                 "shuffled"))[0]
    assert sorted(s) == sorted(c) == sorted(domains[name].encode()) and s != c
    s, c = s.decode(), c.decode()
    n = len(s)
    doubled = _copy1_mean_logp(model, vocab, s + s, n)
    control_intact = _copy1_mean_logp(model, vocab, s + c, n)
    row = rows[(name, "shuffled")]
    assert row["logp_doubled"] == pytest.approx(doubled, abs=2e-4)
    assert row["logp_control_intact"] == pytest.approx(control_intact, abs=2e-4)
    assert row["net_gain"] == pytest.approx(doubled - control_intact, abs=3e-4)
