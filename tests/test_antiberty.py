"""The embedded AntiBERTy against an independent, straightforward implementation (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seqatlas
from seqatlas.examples import demo_fasta
from seqatlas.fasta import read_fasta

pytestmark = pytest.mark.slow


def _two_chains(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    records = list(read_fasta(demo_fasta(), kind="protein"))[:2]  # abituzumab VH and VL
    chains = {r.id.replace("|", "_"): r.sequence.decode() for r in records}
    path = tmp_path / "chains.fa"
    path.write_text("".join(f">{k}\n{v}\n" for k, v in chains.items()))
    return path, chains


def _straightforward_pll_terms(seq: str) -> list[float]:
    """One masked copy at a time, eager attention, special tokens set to -inf, like
    AntiBERTy's own pseudo_log_likelihood."""
    import antiberty
    from transformers import BertForMaskedLM

    root = Path(antiberty.__file__).parent / "trained_models"
    vocab = root.joinpath("vocab.txt").read_text().split()
    model = BertForMaskedLM.from_pretrained(root / "AntiBERTy_md_smooth",
                                            attn_implementation="eager").eval()
    ids = [vocab.index("[CLS]")] + [vocab.index(c) for c in seq] + [vocab.index("[SEP]")]
    special = [i for i, t in enumerate(vocab) if t.startswith("[")]
    terms = []
    with torch.no_grad():
        for i in range(len(seq)):
            masked = list(ids)
            masked[i + 1] = vocab.index("[MASK]")
            logits = model(input_ids=torch.tensor([masked])).logits[0, i + 1].double()
            logits[special] = float("-inf")
            terms.append(torch.log_softmax(logits, -1)[ids[i + 1]].item())
    return terms


def test_exact_logp_of_two_real_antibody_chains(tmp_path):
    fasta, chains = _two_chains(tmp_path)
    seqatlas.ingest(fasta, atlas=tmp_path / "a", likelihood="exact", embeddings=False,
                    workers=0, progress=False)
    positions = seqatlas.Atlas(tmp_path / "a").positions()
    for name, seq in chains.items():
        rows = sorted((r for r in positions.to_pylist() if r["seq_id"] == name),
                      key=lambda r: r["pos"])
        expected = _straightforward_pll_terms(seq)
        assert len(rows) == len(seq)
        for row, want in zip(rows, expected):
            assert row["logp"] == pytest.approx(want, abs=1e-4)
        # AntiBERTy knows antibodies: most residues are its top prediction
        assert sum(r["rank"] == 1 for r in rows) / len(rows) > 0.6
