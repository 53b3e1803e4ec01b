"""DNA tokenizer families against brute-force references, strands, N runs, soft-masking."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import seqatlas
from seqatlas.checkpoints import resolve_model
from seqatlas.checkpoints.tokenizers import reverse_complement
from tests.conftest import write_fasta
from tests.dna_models import make_bpe, make_nonoverlapping, make_overlapping, make_single

FAMILIES = {
    "single": lambda d: make_single(d, context_tokens=48),
    "overlapping_kmer": lambda d: make_overlapping(d, k=3, context_tokens=48),
    "nonoverlapping_kmer": lambda d: make_nonoverlapping(d, k=3, context_tokens=40),
    "bpe": lambda d: make_bpe(d, context_tokens=48),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def dna_model(request, tmp_path_factory):
    directory = FAMILIES[request.param](tmp_path_factory.mktemp("dna") / request.param)
    return request.param, directory


def random_dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(length))


def _vocab(directory) -> dict[str, int]:
    if (directory / "tokenizer.json").exists():
        data = json.loads((directory / "tokenizer.json").read_text())
        vocab = dict(data["model"]["vocab"])
        vocab.update({a["content"]: a["id"] for a in data["added_tokens"]})
        return vocab
    lines = (directory / "vocab.txt").read_text().splitlines()
    return {t: i for i, t in enumerate(lines)}


def _reference_tokens(family: str, directory, seq: str) -> list[tuple[int, int, str]]:
    """The tokenization written out independently of seqatlas."""
    if family == "single":
        return [(i, i + 1, c) for i, c in enumerate(seq)]
    if family == "overlapping_kmer":
        return [(j, j + 3, seq[j : j + 3]) for j in range(len(seq) - 2)]
    if family == "nonoverlapping_kmer":
        out, i = [], 0
        while i < len(seq):
            chunk = seq[i : i + 3]
            if len(chunk) == 3 and set(chunk) <= set("ACGT"):
                out.append((i, i + 3, chunk))
                i += 3
            else:
                out.append((i, i + 1, seq[i]))
                i += 1
        return out
    from tokenizers import Tokenizer

    encoding = Tokenizer.from_file(str(directory / "tokenizer.json")).encode(
        seq, add_special_tokens=False)
    return [(s, e, seq[s:e]) for s, e in encoding.offsets]


def _brute_force(family, directory, seq: str) -> tuple[list[float], list[float]]:
    """Per base: mask exactly the tokens containing it, marginalise by hand (exact and the
    unmasked pass)."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(directory).eval()
    vocab = _vocab(directory)
    tokens = _reference_tokens(family, directory, seq)
    ids = [vocab["[CLS]"]] + [vocab.get(t, vocab["[UNK]"]) for _, _, t in tokens] + \
        [vocab["[SEP]"]]

    def letter_probs(logits, covering, base):
        probs = [0.0] * 4
        for t in covering:
            start, end, _ = tokens[t]
            candidates = [(w, i) for w, i in vocab.items()
                          if len(w) == end - start and set(w) <= set("ACGT")]
            p = torch.softmax(logits[t + 1, [i for _, i in candidates]].double(), -1)
            for (word, _), pw in zip(candidates, p.tolist()):
                probs["ACGT".index(word[base - start])] += pw / len(covering)
        return probs

    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids])).logits[0]
    exact, unmasked = [], []
    for i, letter in enumerate(seq):
        covering = [t for t, (s, e, _) in enumerate(tokens) if s <= i < e]
        masked = list(ids)
        for t in covering:
            masked[t + 1] = vocab["[MASK]"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0]
        exact.append(math.log(letter_probs(logits, covering, i)["ACGT".index(letter)]))
        unmasked.append(math.log(letter_probs(plain, covering, i)["ACGT".index(letter)]))
    return exact, unmasked


def _ingest(tmp_path, directory, records, name="a", **options):
    fasta = write_fasta(tmp_path / f"{name}.fa", records)
    options = {"workers": 0, "progress": False, "kind": "dna", **options}
    seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(directory), **options)
    return seqatlas.Atlas(tmp_path / name)


def test_family_is_detected(dna_model):
    family, directory = dna_model
    spec = resolve_model(str(directory), kind="dna")
    assert spec.family == family
    assert spec.tokenizer().letters == "ACGT"


def test_every_base_matches_brute_force(tmp_path, dna_model):
    family, directory = dna_model
    seq = random_dna(40, seed=7)
    atlas = _ingest(tmp_path, directory, {"s": seq}, likelihood="exact")
    rows = atlas.positions().sort_by("pos").to_pylist()
    assert rows[0]["window_start"] == 0 and rows[0]["window_end"] == 40  # one window
    exact, unmasked = _brute_force(family, directory, seq)
    for row, want, want_unmasked in zip(rows, exact, unmasked):
        assert row["logp"] == pytest.approx(want, abs=1e-5), row["pos"]
        assert row["logp_unmasked"] == pytest.approx(want_unmasked, abs=1e-5), row["pos"]
    tokens = atlas.tokens().sort_by("start").to_pylist()
    expected = _reference_tokens(family, directory, seq)
    assert [(t["start"], t["end"], t["token"]) for t in tokens] == expected
    assert [t["token_id"] for t in tokens] == [s for s, _, _ in expected]


def test_fast_mode_matches_brute_force_of_its_passes(tmp_path, tmp_path_factory):
    directory = make_overlapping(tmp_path_factory.mktemp("ok") / "k3", k=3, context_tokens=130)
    seq = random_dna(120, seed=3)
    atlas = _ingest(tmp_path, directory, {"s": seq}, likelihood="fast", embeddings=False)
    fast = atlas.manifest["scoring"]["fast"]
    assert fast["stride"] == 10 and "3 tokens containing one base" in fast["method"]
    rows = atlas.positions().sort_by("pos").to_pylist()
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(directory).eval()
    vocab = _vocab(directory)
    ids = [vocab["[CLS]"]] + [vocab[seq[j : j + 3]] for j in range(118)] + [vocab["[SEP]"]]
    kmers = [w for w in vocab if len(w) == 3 and not w.startswith("[")]
    for r in (0, 7):  # two of the 10 passes: bases r, r+10, ... masked together
        bases = list(range(r, 120, 10))
        masked = list(ids)
        for b in bases:
            for t in range(max(0, b - 2), min(b, 117) + 1):
                masked[t + 1] = vocab["[MASK]"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0]
        for b in bases:
            covering = range(max(0, b - 2), min(b, 117) + 1)
            p = 0.0
            for t in covering:
                probs = torch.softmax(logits[t + 1, [vocab[w] for w in kmers]].double(), -1)
                p += sum(pw for w, pw in zip(kmers, probs.tolist())
                         if w[b - t] == seq[b]) / len(covering)
            assert rows[b]["logp"] == pytest.approx(math.log(p), abs=1e-5)


def test_kmer_mask_hides_the_base_but_one_token_leaks_it(tmp_path_factory):
    directory = make_overlapping(tmp_path_factory.mktemp("leak") / "k3", k=3, context_tokens=48)
    spec = resolve_model(str(directory), kind="dna")
    tok = spec.tokenizer()
    seq = random_dna(30, seed=9)
    i = 15
    variant = seq[:i] + ("A" if seq[i] != "A" else "C") + seq[i + 1 :]

    def masked_ids(s, tokens_to_mask):
        wt = tok.tokenize(s.encode())
        ids = wt.ids.copy()
        ids[np.asarray(tokens_to_mask) + wt.prefix] = tok.specials.mask
        return ids

    cover = tok.covering(tok.tokenize(seq.encode()), i)
    assert cover.tolist() == [13, 14, 15]
    # all k tokens masked: the model's input no longer depends on base i
    assert np.array_equal(masked_ids(seq, cover), masked_ids(variant, cover))
    # one token masked: its unmasked neighbours still spell base i out
    assert not np.array_equal(masked_ids(seq, [i]), masked_ids(variant, [i]))
    fasta_dir = tmp_path_factory.mktemp("leak_atlas")
    a = _ingest(fasta_dir, directory, {"s": seq}, name="x", likelihood="exact")
    b = _ingest(fasta_dir, directory, {"s": variant}, name="y", likelihood="exact")
    ra = a.positions().sort_by("pos").to_pylist()[i]
    rb = b.positions().sort_by("pos").to_pylist()[i]
    assert ra["entropy"] == pytest.approx(rb["entropy"], abs=1e-6)  # same prediction
    assert ra["logp_unmasked"] != pytest.approx(rb["logp_unmasked"], abs=1e-3)


def test_both_strands_mirror_on_the_reverse_complement(tmp_path, dna_model):
    family, directory = dna_model
    seq = random_dna(40, seed=11)
    rc = reverse_complement(seq.encode()).decode()
    fwd = _ingest(tmp_path, directory, {"s": seq}, name="f", strands="both")
    rev = _ingest(tmp_path, directory, {"s": rc}, name="r", strands="both")
    f = fwd.positions().sort_by("pos").to_pylist()
    r = rev.positions().sort_by("pos").to_pylist()[::-1]
    for a, b in zip(f, r):
        assert a["logp"] == pytest.approx(b["logp_rc"], abs=1e-5)
        assert a["logp_rc"] == pytest.approx(b["logp"], abs=1e-5)
        assert a["logp_mean"] == pytest.approx(b["logp_mean"], abs=1e-5)
        assert a["logp_mean"] == pytest.approx((a["logp"] + a["logp_rc"]) / 2, abs=1e-6)
        assert a["logp_unmasked_mean"] == pytest.approx(b["logp_unmasked_mean"], abs=1e-5)


def test_n_runs_soft_masking_and_short_sequences(tmp_path, tiny_dnabert):
    body = random_dna(60, seed=4)
    records = {
        "gap": body[:30] + "N" * 12 + body[30:],  # a run of 12 N: not scored with threshold 10
        "short_n": body[:20] + "NN" + body[20:40],  # a short run: scored, N itself null
        "soft": body[:20].lower() + body[20:40],
        "upper": body[:40],
        "tiny": "ACG",  # shorter than k = 6
        "only_n": "N" * 25,
    }
    atlas = _ingest(tmp_path, tiny_dnabert, records, skip_n_runs=10, likelihood="exact")
    rows = {}
    for r in atlas.positions().to_pylist():
        rows.setdefault(r["seq_id"], {})[r["pos"]] = r
    gap = rows["gap"]
    assert len(gap) == 72
    for p in range(30, 42):
        assert gap[p]["logp"] is None and gap[p]["window_start"] is None
    for p in list(range(30)) + list(range(42, 72)):
        assert gap[p]["logp"] is not None
        w = (gap[p]["window_start"], gap[p]["window_end"])
        assert w[1] <= 30 or w[0] >= 42  # no window spans the run
    short = rows["short_n"]
    assert short[20]["ref"] == "N" and short[20]["logp"] is None
    assert short[20]["window_start"] is not None and short[19]["logp"] is not None
    soft, upper = rows["soft"], rows["upper"]
    assert [soft[p]["soft_masked"] for p in range(40)] == [True] * 20 + [False] * 20
    for p in range(40):
        assert soft[p]["ref"] == upper[p]["ref"]
        assert soft[p]["logp"] == pytest.approx(upper[p]["logp"], abs=1e-6)
    assert all(r["logp"] is None and r["window_start"] == 0 for r in rows["tiny"].values())
    assert all(r["logp"] is None and r["window_start"] is None for r in rows["only_n"].values())
    summary = seqatlas.info(atlas.path)
    assert summary["positions_unscored"] == 12 + 25
    tokens = atlas.tokens(columns=["seq_id", "start", "end"]).to_pylist()
    assert not [t for t in tokens if t["seq_id"] in ("tiny", "only_n")]
    assert all(t["end"] - t["start"] == 6 for t in tokens)


@pytest.fixture(scope="module")
def tiny_dnabert(tmp_path_factory):
    return make_overlapping(tmp_path_factory.mktemp("dnabert") / "k6", k=6, context_tokens=40)


def test_long_sequence_windows_for_kmers(tmp_path, tiny_dnabert):
    seq = random_dna(300, seed=12)
    atlas = _ingest(tmp_path, tiny_dnabert, {"s": seq}, likelihood="unmasked")
    assert atlas.manifest["scoring"]["window"] == 40 - 2 + 5  # tokens + k - 1 bases
    rows = atlas.positions().sort_by("pos").to_pylist()
    assert [r["pos"] for r in rows] == list(range(300))
    assert all(r["logp_unmasked"] is not None for r in rows)
    tokens = atlas.tokens(columns=["start"]).sort_by("start")["start"].to_pylist()
    assert tokens == list(range(295))  # every 6-mer once, from the window owning its start


def test_dna_options_cli_and_api_agree(tmp_path, tiny_dnabert, capsys):
    from seqatlas.cli.main import main

    fasta = write_fasta(tmp_path / "d.fa", {"d": random_dna(50, 1) + "N" * 8 + random_dna(30, 2)})
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model",
                 str(tiny_dnabert), "--strands", "both", "--skip-n-runs", "5", "--likelihood",
                 "unmasked", "--tokenizer", "overlapping_kmer", "--workers", "0",
                 "--no-progress"])
    assert code == 0
    seqatlas.ingest(fasta, atlas=tmp_path / "api", model=str(tiny_dnabert), strands="both",
                    skip_n_runs=5, likelihood="unmasked", tokenizer="overlapping_kmer",
                    workers=0, progress=False)
    cli, api = seqatlas.Atlas(tmp_path / "cli"), seqatlas.Atlas(tmp_path / "api")
    assert cli.manifest["scoring"] == api.manifest["scoring"]
    assert cli.manifest["scoring"]["strands"] == "both"
    assert cli.manifest["kind"] == "dna" and cli.manifest["kind_detected"]
    assert cli.positions().sort_by("pos").equals(api.positions().sort_by("pos"))
    assert seqatlas.info(tmp_path / "cli")["positions_unscored"] == 8


def test_protein_input_refuses_both_strands(tmp_path, tiny_dnabert):
    fasta = write_fasta(tmp_path / "p.fa", {"p": "MKTAYIAKQRQISFVKSHFSRQ"})
    with pytest.raises(seqatlas.SeqAtlasError, match="strands both needs DNA"):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_dnabert), strands="both",
                        workers=0)
    with pytest.raises(seqatlas.SeqAtlasError, match="overlap"):
        seqatlas.ingest(write_fasta(tmp_path / "d.fa", {"d": random_dna(90, 1)}),
                        atlas=tmp_path / "b", model=str(tiny_dnabert), overlap=4, workers=0)
