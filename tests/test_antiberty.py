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


def test_demo_summarises_real_sequences(tmp_path):
    summary = seqatlas.demo(atlas=tmp_path / "demo", workers=0, progress=False)
    proteins = summary["proteins"]
    rows = {r["seq_id"]: r for r in proteins["sequences"]}
    assert len(rows) == 10 and proteins["info"]["tables"]["positions"]["rows"] == 1237
    antibodies = [r for k, r in rows.items() if k.endswith(("|H", "|L"))]
    repeats = [r for k, r in rows.items() if not k.endswith(("|H", "|L"))]
    assert len(antibodies) == 8 and len(repeats) == 2
    # in-distribution antibody domains vs out-of-distribution repeat proteins
    assert max(r["pseudo_perplexity"] for r in antibodies) < 4
    assert min(r["pseudo_perplexity"] for r in repeats) > 8
    for r in rows.values():
        assert r["pll"] == pytest.approx(r["mean_logp"] * r["scored"], rel=1e-5)
    (dna,) = summary["dna"]["sequences"]
    assert dna["scored"] == 3_000 and summary["dna"]["info"]["scoring"]["strands"] == "both"
    # the trained DNA model names the right base well above the 0.25 chance level on
    # held-out human DNA, on both strands
    assert dna["top1_accuracy"] > 0.3
    assert -3 < dna["mean_logp_rc"] < 0 and -3 < dna["mean_logp"] < 0
