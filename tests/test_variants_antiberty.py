"""Masked-marginal LLRs of the real AntiBERTy on real antibody domains (jain2017) against the
model called directly (slow; needs ../shared/data)."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import pytest
import torch

import seqatlas

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jain2017_antibodies.fa.gz"


def _domains(count: int) -> dict[str, str]:
    if not DATA.exists():
        pytest.skip("needs ../shared/data/jain2017_antibodies.fa.gz (the shared data folder)")
    with gzip.open(DATA, "rt") as fh:
        records = fh.read().split(">")[1:count + 1]
    return {r.split()[0].replace("|", "_"): "".join(r.splitlines()[1:]).strip()
            for r in records}


@functools.lru_cache(maxsize=1)
def _model():
    import antiberty
    from transformers import BertForMaskedLM

    root = Path(antiberty.__file__).parent / "trained_models"
    vocab = root.joinpath("vocab.txt").read_text().split()
    return vocab, BertForMaskedLM.from_pretrained(root / "AntiBERTy_md_smooth",
                                                  attn_implementation="eager").eval()


def _masked_marginals(seq: str, sites: list[int]) -> dict[int, torch.Tensor]:
    """log p over the vocabulary's residue letters at each site, the site masked, the model
    loaded straight from the antiberty package with eager attention."""
    vocab, model = _model()
    ids = [vocab.index("[CLS]")] + [vocab.index(c) for c in seq] + [vocab.index("[SEP]")]
    letters = [vocab.index(c) for c in "ACDEFGHIKLMNPQRSTVWY"]
    out = {}
    with torch.no_grad():
        for i in sites:
            masked = list(ids)
            masked[i + 1] = vocab.index("[MASK]")
            logits = model(input_ids=torch.tensor([masked])).logits[0, i + 1].double()
            out[i] = torch.log_softmax(logits[letters], -1)
    return out


def test_single_and_double_mutant_llrs_equal_the_model(tmp_path):
    domains = _domains(2)
    fasta = tmp_path / "domains.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in domains.items()))
    seqatlas.ingest(fasta, atlas=tmp_path / "a", likelihood="exact", embeddings=False,
                    workers=0, progress=False)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    for seq_id, seq in domains.items():
        sites = [3, 30, 50, 97, len(seq) - 2]
        alts = {i: next(a for a in "WGPAD" if a != seq[i]) for i in sites}
        singles = [f"{seq[i]}{i + 1}{alts[i]}" for i in sites]
        doubles = [f"{singles[0]}:{singles[2]}", f"{singles[1]}:{singles[4]}"]
        table = seqatlas.score_variants(singles + doubles, atlas=tmp_path / "a",
                                        seq_id=seq_id, progress=False).table
        direct = _masked_marginals(seq, sites)
        expected = [(direct[i][letters.index(alts[i])] - direct[i][letters.index(seq[i])])
                    .item() for i in sites]
        got = table["llr"].to_pylist()
        assert got[:5] == pytest.approx(expected, abs=1e-4)
        assert got[5] == pytest.approx(expected[0] + expected[2], abs=2e-4)
        assert got[6] == pytest.approx(expected[1] + expected[4], abs=2e-4)
        assert all(p is None for p in table["problem"].to_pylist())
