"""Tiling: every position scored once, from the window in which it is most central."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import seqatlas
from seqatlas.scoring.windows import tile
from tests.conftest import AMINO, ESM_VOCAB, random_protein, write_fasta


def _centrality(pos: int, start: int, end: int) -> int:
    return min(pos - start, end - 1 - pos)


@given(st.integers(1, 400), st.integers(1, 64), st.data())
def test_tiling_covers_once_and_picks_most_central(length, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    windows = tile(length, window, overlap)
    owned = [p for w in windows for p in range(w.own_start, w.own_end)]
    assert owned == list(range(length))
    assert windows[0].start == 0 and windows[-1].end == length
    for w in windows:
        assert w.start <= w.own_start <= w.own_end <= w.end
        assert w.end - w.start == min(window, length)
        for p in range(w.own_start, w.own_end):
            best = max(_centrality(p, v.start, v.end) for v in windows if v.start <= p < v.end)
            assert _centrality(p, w.start, w.end) == best


def test_invalid_tiling_arguments():
    with pytest.raises(ValueError):
        tile(10, 4, 4)
    with pytest.raises(ValueError):
        tile(10, 0, 0)


def test_sequence_five_times_the_context(tmp_path, tiny_esm):
    from transformers import AutoModelForMaskedLM

    spec_window = 32  # tiny_esm: 34 tokens of context minus <cls> and <eos>
    seq = random_protein(5 * spec_window, seed=11)
    fasta = write_fasta(tmp_path / "long.fa", {"long": seq})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), workers=0,
                    progress=False, likelihood="exact", embeddings=False)
    atlas = seqatlas.Atlas(tmp_path / "a")
    assert atlas.manifest["scoring"]["window"] == spec_window
    rows = atlas.positions().sort_by("pos").to_pylist()
    assert [r["pos"] for r in rows] == list(range(len(seq)))  # each exactly once
    expected = tile(len(seq), spec_window, spec_window // 4)
    assert len(expected) > 5
    bounds = {(r["window_start"], r["window_end"]) for r in rows}
    assert bounds == {(w.start, w.end) for w in expected}
    assert rows[0]["window_start"] == 0 and rows[-1]["window_end"] == len(seq)
    for r in rows:
        assert r["window_end"] - r["window_start"] == spec_window
        best = max(_centrality(r["pos"], w.start, w.end) for w in expected
                   if w.start <= r["pos"] < w.end)
        assert _centrality(r["pos"], r["window_start"], r["window_end"]) == best
    # a middle position is scored with only its window as context
    model = AutoModelForMaskedLM.from_pretrained(tiny_esm).eval()
    middle = rows[len(seq) // 2]
    start, end, pos = middle["window_start"], middle["window_end"], middle["pos"]
    ids = [0] + [ESM_VOCAB.index(c) for c in seq[start:end]] + [2]
    ids[pos - start + 1] = ESM_VOCAB.index("<mask>")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, pos - start + 1]
    letter_logits = logits[[ESM_VOCAB.index(c) for c in AMINO]]
    expected_logp = torch.log_softmax(letter_logits, -1)[AMINO.index(seq[pos])].item()
    assert middle["logp"] == pytest.approx(expected_logp, abs=1e-5)
