"""probe icl and probe doubling: brute-force agreement with the model run by hand for every
tokenizer family, controls, resume, settings refusals, CLI/API parity."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import seqatlas
from seqatlas.store import AtlasReader
from seqatlas.errors import AtlasMismatchError, ConfigError, InputError
from seqatlas.probe import probe_doubling, probe_icl
from seqatlas.probe.targets import Target, choose_control, split_runs
from seqatlas.repeats.copies import copy_runs
from seqatlas.scoring.ablation import corrupt, region_rng, standard_letters

from conftest import write_fasta
from dna_models import make_bpe, make_nonoverlapping, make_overlapping, make_single

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"workers": 0, "progress": False}
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def _dna_with_copies(seed: int, n: int = 70) -> str:
    """Random DNA with a direct copy, a short tandem repeat and a reverse-complement copy,
    all close enough to share a small window."""
    rng = random.Random(seed)

    def rnd(k):
        return "".join(rng.choice("ACGT") for _ in range(k))

    motif = rnd(6)
    stem = rnd(5)
    body = (rnd(3) + motif + rnd(3) + motif + rnd(4) + "CAG" * 3 + rnd(3) + stem + rnd(2)
            + stem[::-1].translate(_COMPLEMENT))
    return body + rnd(max(0, n - len(body)))


@pytest.fixture(scope="module")
def dna_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe_models")
    return {"single": make_single(base / "single", context_tokens=24),
            "overlapping_kmer": make_overlapping(base / "kmer3", 3, context_tokens=26),
            "nonoverlapping_kmer": make_nonoverlapping(base / "nt3", 3, context_tokens=18),
            "bpe": make_bpe(base / "bpe", context_tokens=24)}


# -- the reference: the model run by hand ---------------------------------------------------

class _Reference:
    """Masked logp of one base, computed directly from the checkpoint with transformers."""

    def __init__(self, model_dir: Path, kind: str):
        import torch
        from transformers import AutoModelForMaskedLM

        from seqatlas.checkpoints import resolve_model

        self.spec = resolve_model(str(model_dir), kind=kind)
        self.tokenizer = self.spec.tokenizer()
        self.model = AutoModelForMaskedLM.from_pretrained(str(model_dir)).eval()
        self.torch = torch
        letters = self.tokenizer.letters
        self.by_length: dict[int, list[tuple[int, str]]] = {}
        for token, token_id in self.spec.vocab.items():
            if token and not token.startswith(("[", "<")) and all(c in letters for c in token):
                self.by_length.setdefault(len(token), []).append((token_id, token))

    def covering(self, tokens, base: int) -> list[int]:
        """Tokens whose masking hides ``base``: every token containing it."""
        return [t for t in range(tokens.n_tokens)
                if tokens.starts[t] <= base < tokens.ends[t]]

    def logp(self, residues: bytes, base: int, *, masked_regions=(), mask_also=()) -> float:
        tokens = self.tokenizer.tokenize(residues)
        ids = tokens.ids.copy()
        mask = self.spec.specials.mask
        hidden = set(self.covering(tokens, base))
        for lo, hi in masked_regions:
            hidden |= {t for t in range(tokens.n_tokens)
                       if tokens.starts[t] < hi and tokens.ends[t] > lo}
        for other in mask_also:
            hidden |= set(self.covering(tokens, other))
        for t in hidden:
            ids[t + tokens.prefix] = mask
        with self.torch.no_grad():
            logits = self.model(input_ids=self.torch.tensor(ids[None])).logits[0]
        letters = self.tokenizer.letters
        marginal = np.zeros(len(letters))
        cover = self.covering(tokens, base)
        for t in cover:
            length = int(tokens.ends[t] - tokens.starts[t])
            cands = self.by_length[length]
            probs = self.torch.softmax(logits[t + tokens.prefix, [c for c, _ in cands]], -1)
            offset = base - int(tokens.starts[t])
            for p, (_, text) in zip(probs.tolist(), cands):
                marginal[letters.index(text[offset])] += p / len(cover)
        true = chr(residues[base]).upper().replace("U", "T")
        return math.log(marginal[letters.index(true)])


def _fasta_residues(path: Path) -> dict[str, bytes]:
    from seqatlas.fasta import read_fasta

    return {r.id: r.sequence for r in read_fasta(path, kind="dna" if "dna" in path.name
                                                 else "protein")}


def _check_rows_against_reference(atlas: Path, fasta: Path, reference: _Reference, *,
                                  method: str, seed: int) -> int:
    """Every ablations row of ``method``/``seed`` recomputed by hand; returns rows checked."""
    residues = _fasta_residues(fasta)
    table = seqatlas.Atlas(atlas).sql(
        f"SELECT * FROM ablations WHERE method = '{method}' AND seed = {seed} "
        "ORDER BY seq_id, pos")
    letters = reference.tokenizer.letters
    checked = 0
    for row in table.to_pylist():
        seq = residues[row["seq_id"]]
        ws, we = row["window_start"], row["window_end"]
        window = seq[ws:we]
        base = row["pos"] - ws
        assert not (row["partner_start"] <= row["pos"] < row["partner_end"])
        expected = {"logp_intact": reference.logp(window, base)}
        for role in ("partner", "control"):
            lo, hi = row[f"{role}_start"], row[f"{role}_end"]
            if lo is None:
                assert role == "control" and row["control_rule"] == "none"
                continue
            assert ws <= lo < hi <= we and not (lo <= row["pos"] < hi)
            if method == "mask":
                expected[f"logp_{role}"] = reference.logp(window, base,
                                                          masked_regions=[(lo - ws, hi - ws)])
            else:
                rng = region_rng(seed, method, row["seq_id"], lo, hi, role)
                changed, _ = corrupt(window, lo - ws, hi - ws, method=method, rng=rng,
                                     composition=standard_letters(seq, letters))
                assert changed[: lo - ws] == window[: lo - ws]
                assert changed[hi - ws:] == window[hi - ws:]
                if method == "shuffle":
                    assert sorted(changed[lo - ws:hi - ws]) == sorted(window[lo - ws:hi - ws])
                expected[f"logp_{role}"] = reference.logp(changed, base)
        for column, value in expected.items():
            assert row[column] == pytest.approx(value, abs=1e-5), (column, row)
        assert row["icl_gain"] == pytest.approx(row["logp_intact"] - row["logp_partner"],
                                                abs=1e-6)
        if row["logp_control"] is not None:
            assert row["net_gain"] == pytest.approx(
                row["icl_gain"] - row["control_gain"], abs=1e-6)
        checked += 1
    return checked


@pytest.mark.parametrize("family", ["single", "overlapping_kmer", "nonoverlapping_kmer", "bpe"])
def test_ablations_equal_the_model_run_by_hand_for_every_dna_tokenizer(tmp_path, dna_models,
                                                                      family):
    records = {f"s{i}": _dna_with_copies(i) for i in range(3)}
    fasta = write_fasta(tmp_path / "dna.fa", records)
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(dna_models[family]), embeddings=False,
                    copy_k=4, **COMMON)
    reference = _Reference(dna_models[family], "dna")
    for method, seed in (("mask", 0), ("shuffle", 1), ("substitute", 2)):
        report = probe_icl(atlas, method=method, seed=seed, **COMMON)
        assert report.targets_probed > 0 and not report.intact_recomputed
        assert _check_rows_against_reference(atlas, fasta, reference, method=method,
                                             seed=seed) == report.positions_probed
    strands = seqatlas.Atlas(atlas).sql("SELECT DISTINCT copy_strand FROM ablations")
    assert set(strands["copy_strand"].to_pylist()) == {"+", "-"}  # hairpins are probed too
    # the intact value is the atlas's own logp
    mismatch = seqatlas.Atlas(atlas).sql(
        "SELECT count(*) AS n FROM ablations a JOIN positions p USING (seq_id, pos) "
        "WHERE a.logp_intact IS DISTINCT FROM p.logp")
    assert mismatch["n"][0].as_py() == 0


def test_protein_ablations_exact_and_fast_equal_the_model_run_by_hand(tmp_path, tiny_esm):
    rng = random.Random(3)
    amino = "ACDEFGHIKLMNPQRSTVWY"
    motif = "".join(rng.choice(amino) for _ in range(10))
    records = {f"p{i}": "".join(rng.choice(amino) for _ in range(5)) + motif
               + "".join(rng.choice(amino) for _ in range(6)) + motif
               + "".join(rng.choice(amino) for _ in range(30)) for i in range(2)}
    fasta = write_fasta(tmp_path / "prot.fa", records)
    exact, fast = tmp_path / "exact", tmp_path / "fast"
    seqatlas.ingest(fasta, atlas=exact, model=str(tiny_esm), embeddings=False, **COMMON)
    reference = _Reference(tiny_esm, "protein")
    report = probe_icl(exact, method="mask", **COMMON)
    assert report.positions_probed >= 8
    assert _check_rows_against_reference(exact, fasta, reference, method="mask", seed=0) \
        == report.positions_probed

    # fast: each base shares its pass with the owned bases `stride` apart, as at ingest
    seqatlas.ingest(fasta, atlas=fast, model=str(tiny_esm), embeddings=False,
                    likelihood="fast", **COMMON)
    probe_icl(fast, method="mask", **COMMON)
    stride = reference.tokenizer.fast_stride()
    residues = _fasta_residues(fasta)
    rows = seqatlas.Atlas(fast).sql(
        "SELECT a.*, o.own_start, o.own_end FROM ablations a JOIN (SELECT seq_id, "
        "window_start, min(pos) AS own_start, max(pos) + 1 AS own_end FROM positions "
        "GROUP BY ALL) o USING (seq_id, window_start)").to_pylist()
    assert rows
    for row in rows:
        ws = row["window_start"]
        window = residues[row["seq_id"]][ws:row["window_end"]]
        base = row["pos"] - ws
        owned = range(row["own_start"] - ws, row["own_end"] - ws)
        same_pass = [b for b in owned if (b - owned.start) % stride == (base - owned.start)
                     % stride and b != base]
        lo, hi = row["partner_start"] - ws, row["partner_end"] - ws
        expected = reference.logp(window, base, masked_regions=[(lo, hi)], mask_also=same_pass)
        assert row["logp_partner"] == pytest.approx(expected, abs=1e-5)
        assert row["logp_intact"] == pytest.approx(
            reference.logp(window, base, mask_also=same_pass), abs=1e-5)


def test_values_do_not_depend_on_units_or_batches(tmp_path, dna_models):
    fasta = write_fasta(tmp_path / "dna.fa", {f"s{i}": _dna_with_copies(10 + i, 90)
                                              for i in range(4)})
    for name in ("a", "b"):
        seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(dna_models["overlapping_kmer"]),
                        embeddings=False, copy_k=4, **COMMON)
    probe_icl(tmp_path / "a", method="shuffle", seed=5, **COMMON)
    probe_icl(tmp_path / "b", method="shuffle", seed=5, unit_tokens=1, batch_tokens=40,
              **COMMON)
    rows = [seqatlas.Atlas(tmp_path / n).sql("SELECT * FROM ablations ORDER BY seq_id, pos")
            for n in ("a", "b")]
    assert rows[0].num_rows == rows[1].num_rows > 0
    for column in rows[0].column_names:
        a, b = rows[0][column].to_pylist(), rows[1][column].to_pylist()
        if column.startswith(("logp", "icl", "control_gain", "net")):
            assert np.allclose(np.array(a, dtype=float), np.array(b, dtype=float), atol=1e-5,
                               equal_nan=True), column
        else:
            assert a == b, column
    assert len(seqatlas.Atlas(tmp_path / "b").part_paths("ablations")) > 1


def test_rerun_skips_settings_are_checked_and_methods_coexist(tmp_path, dna_models):
    fasta = write_fasta(tmp_path / "dna.fa", {"s0": _dna_with_copies(0)})
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(dna_models["single"]), embeddings=False,
                    copy_k=4, **COMMON)
    first = probe_icl(atlas, **COMMON)
    parts = sorted(p.name for p in (atlas / "ablations").iterdir())
    again = probe_icl(atlas, **COMMON)
    assert again.targets_probed == 0 and again.targets_skipped == first.targets_total
    assert sorted(p.name for p in (atlas / "ablations").iterdir()) == parts
    probe_icl(atlas, method="substitute", seed=9, **COMMON)
    counts = seqatlas.Atlas(atlas).sql(
        "SELECT method, seed, count(*) AS n FROM ablations GROUP BY ALL ORDER BY method")
    assert counts.to_pylist() == [
        {"method": "mask", "seed": 0, "n": first.positions_probed},
        {"method": "substitute", "seed": 9, "n": first.positions_probed}]
    with pytest.raises(AtlasMismatchError, match="--likelihood exact"):
        probe_icl(atlas, likelihood="fast", **COMMON)
    with pytest.raises(ConfigError, match="--method"):
        probe_icl(atlas, method="scramble", **COMMON)
    for seed in (-1, 2**63, 1.5, True):
        with pytest.raises(ConfigError, match="--seed"):
            probe_icl(atlas, seed=seed, **COMMON)


def test_corruption_draws_depend_on_the_whole_seed_and_the_region():
    window = b"ACGTACGTTTGACCAGTAGGCATC"
    letters = standard_letters(window, "ACGT")

    def drawn(seed, *region):
        return corrupt(window, 4, 20, method="substitute", rng=region_rng(seed, *region),
                       composition=letters)[0]

    assert drawn(1, "s", 4, 20) == drawn(1, "s", 4, 20)
    assert len({drawn(s, "s", 4, 20) for s in (1, 1 + 2**32, 1 + 2**40)}) == 3
    assert drawn(1, "s", 4, 20) != drawn(1, "t", 4, 20)
    shuffled = corrupt(window, 4, 20, method="shuffle", rng=region_rng(1, "s"))[0]
    assert sorted(shuffled[4:20]) == sorted(window[4:20]) and shuffled[:4] == window[:4]
    assert corrupt(window, 4, 20, method="mask") == (window, ((4, 20),))


def test_selection_by_where_and_bed(tmp_path, dna_models):
    fasta = write_fasta(tmp_path / "dna.fa", {"s0": _dna_with_copies(0), "s1": _dna_with_copies(1)})
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(dna_models["single"]), embeddings=False,
                    copy_k=4, **COMMON)
    probe_icl(atlas, where="seq_id = 's1' AND pos < 20", **COMMON)
    got = seqatlas.Atlas(atlas).sql(
        "SELECT DISTINCT seq_id, target_start, target_end FROM ablations").to_pylist()
    assert got and all(r["seq_id"] == "s1" and r["target_start"] < 20 for r in got)
    bed = tmp_path / "sel.bed"
    bed.write_text("s0\t2\t10\n")
    probe_icl(atlas, bed=bed, method="shuffle", **COMMON)
    got = seqatlas.Atlas(atlas).sql("SELECT DISTINCT seq_id, target_start, target_end FROM ablations "
                    "WHERE method = 'shuffle'").to_pylist()
    assert got and all(r["seq_id"] == "s0" and r["target_start"] < 10 and r["target_end"] > 2
                       for r in got)
    with pytest.raises(ConfigError, match="not in the atlas"):
        (tmp_path / "bad.bed").write_text("chrZ\t1\t5\n")
        probe_icl(atlas, bed=tmp_path / "bad.bed", **COMMON)


def test_an_atlas_without_copy_columns_says_how_to_get_them(tmp_path, dna_models):
    fasta = write_fasta(tmp_path / "dna.fa", {"s0": _dna_with_copies(0)})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(dna_models["single"]),
                    embeddings=False, copy_k=0, **COMMON)
    with pytest.raises(ConfigError, match="re-ingest .* --copy-k"):
        probe_icl(tmp_path / "a", **COMMON)


# -- targets and controls ----------------------------------------------------------------

def test_runs_that_overlap_their_partner_are_split():
    class Runs:  # a tandem run of period 3 and a loopless hairpin (palindrome)
        seq = np.array([0, 0])
        start, end = np.array([10, 40]), np.array([22, 48])
        direct = np.array([True, False])
        partner_start, partner_end = np.array([13, 40]), np.array([25, 48])
        window_start, window_end = np.array([0, 0]), np.array([100, 100])

        def __len__(self):
            return 2

    targets = split_runs(Runs())
    tandem = [(t.start, t.end, t.partner_start, t.partner_end) for t in targets if t.direct]
    assert tandem == [(10, 13, 13, 16), (13, 16, 16, 19), (16, 19, 19, 22), (19, 22, 22, 25)]
    hairpin = [(t.start, t.end, t.partner_start, t.partner_end) for t in targets
               if not t.direct]
    assert hairpin == [(40, 44, 44, 48), (44, 48, 40, 44)]
    for t in targets:
        assert t.end <= t.partner_start or t.partner_end <= t.start


def test_control_rules():
    target = Target(0, 50, 60, 70, 80, True, 0, 200)
    mirror = choose_control(target, np.zeros(200, dtype=bool))
    assert (mirror.control_start, mirror.control_end, mirror.control_rule) == (30, 40, "mirror")
    has_copy = np.zeros(200, dtype=bool)
    has_copy[35] = True  # a copy inside the mirror region: nearest admissible instead
    nearest = choose_control(target, has_copy)
    assert nearest.control_rule == "nearest" and (nearest.control_start, nearest.control_end) \
        == (25, 35)
    edge = choose_control(Target(0, 5, 15, 20, 30, True, 0, 40), np.zeros(40, dtype=bool))
    assert edge.control_rule == "nearest" and edge.control_start == 30  # mirror runs off
    full = choose_control(Target(0, 0, 10, 10, 20, True, 0, 20), np.zeros(20, dtype=bool))
    assert full.control_rule == "none" and full.control_start is None


def test_copy_runs_of_an_atlas_agree_with_its_detected_repeats(tmp_path, dna_models):
    fasta = write_fasta(tmp_path / "dna.fa", {"s0": _dna_with_copies(0)})
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(dna_models["single"]), embeddings=False,
                    copy_k=4, **COMMON)
    from seqatlas.repeats.copies import read_copies

    reader = seqatlas.Atlas(atlas)
    runs = copy_runs(read_copies(reader), ["s0"])
    repeats = seqatlas.repeats.copy_repeats(atlas)
    assert repeats["start"].to_pylist() == runs.start.tolist()
    assert [f"s0:{a}-{b}" for a, b in zip(runs.partner_start, runs.partner_end)] \
        == repeats["name"].to_pylist()


# -- a model that looks the answer up -------------------------------------------------------

LOOKUP_OFFSET, LOOKUP_LENGTH = 8, 30


def _train_lookup_model(directory: Path) -> float:
    """A tiny single-base BERT trained in-test to predict a masked base from the base
    LOOKUP_OFFSET downstream (always a copy of it in training); returns the final loss."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from dna_models import SPECIALS

    vocab = SPECIALS + list("ACGTN")  # A..T are ids 5..8, [MASK] is 4
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, d = LOOKUP_LENGTH, LOOKUP_OFFSET
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=n + 2, pad_token_id=0, hidden_dropout_prob=0,
                        attention_probs_dropout_prob=0)
    model = BertForMaskedLM(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(700):
        x = rng.integers(5, 9, size=(64, n))
        chosen = rng.random((64, n)) < 0.15
        chosen[:, n - d:] = False
        for b in range(64):
            at = np.flatnonzero(chosen[b])
            chosen[b, at[np.isin(at + d, at)]] = False  # the base looked up is never masked
            at = np.flatnonzero(chosen[b])
            x[b, at] = x[b, at + d]
        ids = np.concatenate([np.full((64, 1), 2), x, np.full((64, 1), 3)], axis=1)
        where = np.pad(chosen, ((0, 0), (1, 1)))
        labels = np.where(where, ids, -100)
        ids[where] = 4
        loss = model(input_ids=torch.tensor(ids), labels=torch.tensor(labels)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    model.save_pretrained(directory)
    return float(loss.detach())


def test_a_model_that_looks_up_its_copy_shows_icl_gain_and_its_control_does_not(tmp_path):
    loss = _train_lookup_model(tmp_path / "lookup")
    assert loss < 0.1, f"the look-up model did not train (loss {loss:.3f})"
    rng = random.Random(7)

    def rnd(k):
        return "".join(rng.choice("ACGT") for _ in range(k))

    records = {}
    for i in range(8):  # flank 8, motif 8, its copy LOOKUP_OFFSET downstream, flank 6
        motif = rnd(LOOKUP_OFFSET)
        records[f"s{i}"] = rnd(8) + motif + motif + rnd(6)
    fasta = write_fasta(tmp_path / "planted.fa", records)
    atlas = tmp_path / "atlas"
    seqatlas.ingest(fasta, atlas=atlas, model=str(tmp_path / "lookup"), embeddings=False,
                    copy_k=6, **COMMON)
    probe_icl(atlas, **COMMON)
    # copy 1's targets: their partner (copy 2) lies LOOKUP_OFFSET downstream, where the
    # model looks; the mirror control lies upstream, where it does not
    planted = seqatlas.Atlas(atlas).sql(
        """SELECT count(DISTINCT seq_id) AS sequences, count(*) AS n,
                  count(*) FILTER (control_rule = 'mirror') AS mirrored,
                  avg(logp_intact) AS intact, avg(icl_gain) AS icl,
                  avg(control_gain) AS control, avg(net_gain) AS net
           FROM ablations WHERE partner_start - target_start = 8
                            AND target_start >= 8 AND target_end <= 16""").to_pylist()[0]
    assert planted["sequences"] == 8 and planted["n"] >= 20 and planted["mirrored"] >= 16
    assert planted["intact"] > -0.05  # the copy makes the masked base nearly certain
    assert planted["icl"] > 2.0  # corrupting the copy takes that away ...
    assert abs(planted["control"]) < 0.05  # ... corrupting the mirror region does not
    assert planted["net"] > 2.0

# -- resume -------------------------------------------------------------------------------

def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "seqatlas.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_ablations(tmp_path, tmp_path_factory):
    from conftest import make_esm, random_protein

    model = make_esm(tmp_path_factory.mktemp("models") / "probe_esm", context_tokens=64,
                     hidden=128, layers=4, seed=2)
    rng = random.Random(4)
    records = {}
    for i in range(12):
        motif = random_protein(10, seed=100 + i)
        records[f"p{i}"] = random_protein(8, seed=i) + motif + random_protein(6, seed=50 + i) \
            + motif + random_protein(20 + rng.randrange(10), seed=200 + i)
    fasta = write_fasta(tmp_path / "in.fa", records)
    for name in ("ref", "victim"):
        seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(model), embeddings=False,
                        **COMMON)
    args = ["--unit-tokens", "2000", "--workers", "0", "--no-progress"]
    reference = _cli("probe", "icl", "--atlas", str(tmp_path / "ref"), *args)
    assert reference.returncode == 0, reference.stderr
    total = sum(1 for u in json.loads((tmp_path / "ref" / "atlas.json").read_text())
                ["units"].values() if u.get("probe") == "icl")
    assert total > 3

    victim = tmp_path / "victim"
    proc = subprocess.Popen([sys.executable, "-m", "seqatlas.cli.main", "probe", "icl",
                             "--atlas", str(victim), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # the state as a reader sees it: atlas.json plus the log
        if AtlasReader(victim).manifest.table_parts("ablations"):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sum(1 for u in AtlasReader(victim).manifest.units.values()
               if u.get("probe") == "icl")
    assert 0 < done < total, "the kill must land half way through"
    resumed = _cli("probe", "icl", "--atlas", str(victim), *args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["targets_skipped"] > 0
    query = "SELECT * FROM ablations ORDER BY seq_id, pos"
    assert seqatlas.Atlas(victim).sql(query).equals(seqatlas.Atlas(tmp_path / "ref").sql(query))
    listed = {p.name for p in seqatlas.Atlas(victim).part_paths("ablations")}
    assert {p.name for p in (victim / "ablations").iterdir()} == listed


# -- doubling ------------------------------------------------------------------------------

def test_doubling_equals_the_model_run_by_hand(tmp_path, tiny_esm):
    records = {"a": "MKTAYIAKQR", "b": "GSHMLEDPVA"}
    fasta = write_fasta(tmp_path / "p.fa", records)
    out = tmp_path / "d.parquet"
    table = probe_doubling(fasta, model=str(tiny_esm), output=out, shuffle=True, seed=3,
                           **COMMON)
    assert table.num_rows == 4 and pa.parquet.read_table(out).equals(table)
    reference = _Reference(tiny_esm, "protein")
    for row in table.to_pylist():
        s = records[row["seq_id"]].encode()
        if row["variant"] == "shuffled":
            s = corrupt(s, 0, len(s), method="shuffle",
                        rng=region_rng(3, "variant", row["seq_id"]))[0]
            assert sorted(s) == sorted(records[row["seq_id"]].encode())
        n = len(s)
        c = corrupt(s, 0, n, method="shuffle",
                    rng=region_rng(3, "control-block", row["seq_id"], row["variant"]))[0]
        alone = np.mean([reference.logp(s, i) for i in range(n)])
        doubled = np.mean([reference.logp(s + s, i) for i in range(n)])
        partner = np.mean([reference.logp(s + s, i, masked_regions=[(n, 2 * n)])
                           for i in range(n)])
        control_intact = np.mean([reference.logp(s + c, i) for i in range(n)])
        for column, value in (("logp_alone", alone), ("logp_doubled", doubled),
                              ("logp_partner", partner), ("logp_control", partner),
                              ("logp_control_intact", control_intact),
                              ("icl_gain", doubled - partner),
                              ("control_gain", control_intact - partner),
                              ("net_gain", doubled - control_intact),
                              ("doubling_gain", doubled - alone)):
            assert row[column] == pytest.approx(value, abs=1e-5), column


def test_doubling_refuses_sequences_longer_than_half_the_context(tmp_path, tiny_esm):
    fasta = write_fasta(tmp_path / "p.fa", {"ok": "MKTAY", "long": "MKTAYIAKQR" * 2})
    with pytest.raises(InputError, match="record 'long'.*at most 16 residues"):
        probe_doubling(fasta, model=str(tiny_esm), **COMMON)


def test_probe_cli_matches_the_api(tmp_path, tiny_esm, dna_models):
    fasta = write_fasta(tmp_path / "p.fa", {"a": "MKTAYIAKQR"})
    out = tmp_path / "d.tsv"
    done = _cli("probe", "doubling", str(fasta), "--model", str(tiny_esm), "-o", str(out),
                "--workers", "0", "--no-progress")  # TSV by the file's extension
    assert done.returncode == 0, done.stderr
    api = probe_doubling(fasta, model=str(tiny_esm), **COMMON)
    import pyarrow.csv as pacsv

    assert out.read_text().startswith("seq_id\tvariant\tlength\t")
    cli_rows = pacsv.read_csv(out, parse_options=pacsv.ParseOptions(delimiter="\t")).to_pylist()
    assert cli_rows[0]["icl_gain"] == pytest.approx(api["icl_gain"][0].as_py(), abs=1e-6)
    assert "icl_gain" in done.stdout and "control_gain" in done.stdout

    dna = write_fasta(tmp_path / "dna.fa", {"s0": _dna_with_copies(0)})
    for name in ("cli", "api"):
        seqatlas.ingest(dna, atlas=tmp_path / name, model=str(dna_models["single"]),
                        embeddings=False, copy_k=4, **COMMON)
    done = _cli("probe", "icl", "--atlas", str(tmp_path / "cli"), "--method", "substitute",
                "--seed", "4", "--workers", "0", "--no-progress", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["targets_probed"] > 0
    seqatlas.Atlas(tmp_path / "api").probe_icl(method="substitute", seed=4, **COMMON)
    query = "SELECT * FROM ablations ORDER BY seq_id, pos"
    assert seqatlas.Atlas(tmp_path / "cli").sql(query).equals(
        seqatlas.Atlas(tmp_path / "api").sql(query))
    bad = _cli("probe", "icl", "--atlas", str(tmp_path / "cli"), "--likelihood", "fast",
               "--workers", "0")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ") and "Traceback" not in \
        bad.stderr
