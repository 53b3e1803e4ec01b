"""Scores against brute-force references on tiny random checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import seqatlas
from seqatlas.scoring.scorer import Scorer, WindowJob, pack_batches
from seqatlas.checkpoints import load_model, resolve_model
from tests.conftest import AMINO, ESM_VOCAB, random_protein, write_fasta


def _reference_model(path):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(path).eval()


def _letter_logprobs(model, ids: list[int], masked: list[int]) -> torch.Tensor:
    """log p over the 20 amino acids at token index masked[0], the given tokens masked."""
    x = torch.tensor([ids])
    for m in masked:
        x[0, m] = ESM_VOCAB.index("<mask>")
    with torch.no_grad():
        logits = model(input_ids=x).logits[0]
    letter_ids = [ESM_VOCAB.index(c) for c in AMINO]
    return torch.log_softmax(logits[:, letter_ids].double(), dim=-1)


def _ids(seq: str) -> list[int]:
    return [ESM_VOCAB.index("<cls>")] + [ESM_VOCAB.index(c) for c in seq] + \
        [ESM_VOCAB.index("<eos>")]


def _ingest(tmp_path, tiny_esm, records, name="atlas", **options):
    fasta = write_fasta(tmp_path / f"{name}.fa", records)
    options.setdefault("workers", 0)
    options.setdefault("progress", False)
    seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(tiny_esm), **options)
    return seqatlas.Atlas(tmp_path / name)


def test_exact_logp_equals_brute_force_loop(tmp_path, tiny_esm):
    seq = random_protein(23, seed=3)
    atlas = _ingest(tmp_path, tiny_esm, {"p": seq}, likelihood="exact")
    rows = atlas.positions().sort_by("pos").to_pylist()
    model = _reference_model(tiny_esm)
    ids = _ids(seq)
    assert [r["pos"] for r in rows] == list(range(len(seq)))
    for i, row in enumerate(rows):
        expected = _letter_logprobs(model, ids, [i + 1])[i + 1, AMINO.index(seq[i])].item()
        assert row["ref"] == seq[i]
        assert row["logp"] == pytest.approx(expected, abs=1e-5)


def test_unmasked_logp_equals_one_pass(tmp_path, tiny_esm):
    seq = random_protein(19, seed=4)
    atlas = _ingest(tmp_path, tiny_esm, {"p": seq}, likelihood="unmasked")
    rows = atlas.positions().sort_by("pos").to_pylist()
    logprobs = _letter_logprobs(_reference_model(tiny_esm), _ids(seq), [])
    for i, row in enumerate(rows):
        assert row["logp"] is None
        assert row["logp_unmasked"] == pytest.approx(
            logprobs[i + 1, AMINO.index(seq[i])].item(), abs=1e-5)


def test_entropy_and_rank_by_hand_on_five_residues(tmp_path, tiny_esm):
    seq = "MKTAY"
    atlas = _ingest(tmp_path, tiny_esm, {"five": seq}, likelihood="exact")
    rows = atlas.positions().sort_by("pos").to_pylist()
    model = _reference_model(tiny_esm)
    for i, row in enumerate(rows):
        probs = [math.exp(v) for v in _letter_logprobs(model, _ids(seq), [i + 1])[i + 1].tolist()]
        entropy = -sum(p * math.log(p) for p in probs)
        true = probs[AMINO.index(seq[i])]
        rank = 1 + sum(1 for p in probs if p > true)
        assert row["entropy"] == pytest.approx(entropy, abs=1e-5)
        assert row["rank"] == rank
        assert row["logp"] == pytest.approx(math.log(true), abs=1e-5)


def test_fast_mode_masks_every_seventh_position_together(tmp_path, tiny_esm):
    seq = random_protein(30, seed=5)
    atlas = _ingest(tmp_path, tiny_esm, {"p": seq}, likelihood="fast")
    fast = atlas.manifest["scoring"]["fast"]
    assert fast["stride"] == 7 and "i mod 7" in fast["method"] and fast["mask_rate"] == 0.1429
    rows = atlas.positions().sort_by("pos").to_pylist()
    model = _reference_model(tiny_esm)
    for r in range(7):
        group = [i for i in range(len(seq)) if i % 7 == r]
        logprobs = _letter_logprobs(model, _ids(seq), [i + 1 for i in group])
        for i in group:
            assert rows[i]["logp"] == pytest.approx(
                logprobs[i + 1, AMINO.index(seq[i])].item(), abs=1e-5)


def test_letters_the_model_lacks_get_null_logp(tmp_path, tiny_bert):
    fasta = write_fasta(tmp_path / "x.fa", {"x": "MKXAYB"})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_bert), workers=0,
                    progress=False)
    rows = seqatlas.Atlas(tmp_path / "a").positions().sort_by("pos").to_pylist()
    assert [r["logp"] is None for r in rows] == [False, False, True, False, False, True]
    assert rows[2]["rank"] is None and rows[2]["entropy"] > 0
    tokens = seqatlas.Atlas(tmp_path / "a").tokens().sort_by("start")
    assert tokens["token"].to_pylist() == ["M", "K", "[UNK]", "A", "Y", "[UNK]"]


@pytest.fixture(scope="module")
def esm_scorer(tiny_esm):
    spec = resolve_model(str(tiny_esm), kind="protein")
    return lambda budget: Scorer(load_model(spec), likelihood="exact", embeddings=True,
                                 layer=spec.num_layers, batch_tokens=budget)


def _job(seq: str, name: str) -> WindowJob:
    return WindowJob(seq_id=name, token_offset=0, start=0, end=len(seq), own_start=0,
                     own_end=len(seq), residues=seq.encode())


def test_values_do_not_depend_on_batch_composition(esm_scorer):
    target = _job(random_protein(17, seed=6), "target")
    others = [_job(random_protein(n, seed=n), f"o{n}") for n in (5, 29, 12, 31, 17)]
    alone_pos, alone_tok = esm_scorer(16384).score([target])
    for budget in (64, 400, 16384):  # tiny budgets: one row per batch; large: mixed lengths
        scorer = esm_scorer(budget)
        positions, tokens = scorer.score(others[:3] + [target] + others[3:])
        if budget == 16384:
            assert scorer.real_tokens < scorer.computed_tokens  # really padded together
        mine = positions.filter(positions["seq_id"].to_numpy(zero_copy_only=False) == "target")
        for column in ("logp", "logp_unmasked", "entropy"):
            np.testing.assert_allclose(mine[column].to_numpy(), alone_pos[column].to_numpy(),
                                       atol=1e-5, rtol=0)
        assert mine["rank"].to_pylist() == alone_pos["rank"].to_pylist()
        emb = tokens.filter(tokens["seq_id"].to_numpy(zero_copy_only=False) == "target")
        np.testing.assert_allclose(
            np.stack(emb["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32),
            np.stack(alone_tok["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32),
            atol=2e-3)


def test_pack_batches_respects_budget_and_keeps_every_row():
    lengths = [10, 50, 50, 7, 30, 30, 30, 100]
    batches = pack_batches(lengths, budget=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 100
    # longest first, so equal lengths share batches
    assert batches[0] == [7] and batches[1] == [1, 2]


def test_embeddings_are_the_chosen_layer(tmp_path, tiny_esm):
    seq = random_protein(12, seed=8)
    atlas = _ingest(tmp_path, tiny_esm, {"p": seq}, likelihood="none", layer=1)
    assert atlas.manifest["scoring"]["layer"] == 1
    positions = atlas.positions()
    assert positions["logp"].null_count == len(seq) and positions["logp_unmasked"].null_count \
        == len(seq)
    tokens = atlas.tokens().sort_by("start")
    model = _reference_model(tiny_esm)
    with torch.no_grad():
        hidden = model.esm(input_ids=torch.tensor([_ids(seq)]),
                           output_hidden_states=True).hidden_states[1][0, 1:-1]
    got = np.stack(tokens["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_allclose(got, hidden.numpy(), atol=2e-3, rtol=2e-3)
    assert tokens["token_id"].to_pylist() == list(range(len(seq)))
    assert tokens["end"].to_pylist() == list(range(1, len(seq) + 1))
