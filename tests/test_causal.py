"""Causal (autoregressive) models through the transformers-causal adapter, checkpoints that
ship their own code, and third-party adapters from entry points: brute force against the
model's own forward pass on tiny random checkpoints."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import seqatlas
from seqatlas.checkpoints import resolve_model
from seqatlas.checkpoints.tokenizers import reverse_complement
from seqatlas.errors import AtlasMismatchError, ConfigError, ModelError
from tests.conftest import write_fasta

DNA = "ACGT"
CHAR_VOCAB = ["<|endoftext|>", "<pad>"] + list(DNA) + ["N"]


def _gpt2(directory: Path, vocab_size: int, *, positions: int, seed: int, layers: int = 2,
          embd: int = 32) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=embd,
                        n_layer=layers, n_head=4, bos_token_id=0, eos_token_id=0,
                        pad_token_id=1)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


def make_char_gpt(directory: Path, *, positions: int = 24, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(CHAR_VOCAB) + "\n")
    return _gpt2(directory, len(CHAR_VOCAB), positions=positions, seed=seed)


def make_bpe_gpt(directory: Path, *, positions: int = 24) -> Path:
    from tokenizers import Tokenizer, models, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=30, special_tokens=["<|endoftext|>", "<pad>",
                                                                 "<unk>"],
                                  initial_alphabet=list("ACGTN"), show_progress=False)
    rng = random.Random(5)
    tokenizer.train_from_iterator(["".join(rng.choice("AACGTTAC") for _ in range(200))
                                   for _ in range(50)], trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    return _gpt2(directory, tokenizer.get_vocab_size(), positions=positions, seed=1)


def random_dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(DNA) for _ in range(length))


@pytest.fixture(scope="module")
def char_gpt(tmp_path_factory):
    return make_char_gpt(tmp_path_factory.mktemp("char_gpt"))


@pytest.fixture(scope="module")
def bpe_gpt(tmp_path_factory):
    return make_bpe_gpt(tmp_path_factory.mktemp("bpe_gpt"))


def _model(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).eval()


def _ingest(tmp_path, model, records, name="a", **options):
    fasta = write_fasta(tmp_path / f"{name}.fa", records)
    options = {"workers": 0, "progress": False, "kind": "dna", **options}
    with pytest.warns(UserWarning) if options.pop("expect_warning", False) else _nothing():
        seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(model), **options)
    return seqatlas.Atlas(tmp_path / name)


class _nothing:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def _char_logp(model, residues: str) -> np.ndarray:
    """log p(x_i | BOS, x_<i) over ACGT for every residue of ``residues``, one pass."""
    ids = torch.tensor([[0] + [CHAR_VOCAB.index(c) for c in residues]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    letter_ids = [CHAR_VOCAB.index(c) for c in DNA]
    lp = torch.log_softmax(logits[:, letter_ids].double(), dim=-1)
    return np.array([lp[i, DNA.index(c)].item() for i, c in enumerate(residues)])


def test_causal_logp_equals_brute_force_on_both_strands_with_windows(tmp_path, char_gpt):
    seq = random_dna(70, seed=1)  # longer than the 23-residue window: several windows
    atlas = _ingest(tmp_path, char_gpt, {"s": seq}, strands="both")
    assert atlas.manifest.scoring.likelihood == "causal"  # the causal model's default
    assert atlas.manifest.model.extra["objective"] == "causal"
    assert atlas.manifest.model.extra["adapter"] == "transformers-causal"
    rows = atlas.positions().sort_by("pos").to_pylist()
    model = _model(char_gpt)
    overlap = atlas.manifest.scoring.overlap
    assert len({r["window_start"] for r in rows}) > 2
    for r in rows:
        i, ws, we = r["pos"], r["window_start"], r["window_end"]
        # every position keeps at least --overlap of context on each side (ends excepted)
        assert i - ws >= overlap or ws == 0
        assert we - i - 1 >= overlap or we == len(seq)
        forward = _char_logp(model, seq[ws:we])[i - ws]
        reverse = _char_logp(model, reverse_complement(seq[ws:we].encode()).decode())
        rc = reverse[we - 1 - i]
        assert r["logp"] == pytest.approx(forward, abs=1e-5)
        assert r["logp_rc"] == pytest.approx(rc, abs=1e-5)
        assert r["logp_mean"] == pytest.approx((forward + rc) / 2, abs=1e-5)
        assert r["logp_unmasked"] is None and r["rank"] >= 1


def test_forward_only_windows_give_left_context_and_embeddings(tmp_path, char_gpt):
    seq = random_dna(60, seed=2)
    atlas = _ingest(tmp_path, char_gpt, {"s": seq}, overlap=8)
    rows = atlas.positions().sort_by("pos").to_pylist()
    model = _model(char_gpt)
    for r in rows:
        i, ws = r["pos"], r["window_start"]
        assert i - ws >= 8 or ws == 0  # left context of at least --overlap
        assert r["logp"] == pytest.approx(_char_logp(model, seq[ws:r["window_end"]])[i - ws],
                                          abs=1e-5)
        assert r["logp_rc"] is None
    tokens = atlas.tokens().sort_by("start").to_pylist()
    assert [t["start"] for t in tokens] == list(range(len(seq)))
    by_pos = {r["pos"]: r for r in rows}
    for t in tokens[::7]:
        ws, we = by_pos[t["start"]]["window_start"], by_pos[t["start"]]["window_end"]
        ids = torch.tensor([[0] + [CHAR_VOCAB.index(c) for c in seq[ws:we]]])
        with torch.no_grad():
            hidden = model.transformer(ids).last_hidden_state[0, 1 + t["start"] - ws]
        assert np.allclose(np.array(t["embedding"], dtype=np.float32), hidden.numpy(),
                           atol=2e-3 * float(hidden.abs().max()) + 1e-3)


def test_scoring_alone_equals_scoring_in_a_batch(tmp_path, char_gpt):
    seq = random_dna(17, seed=3)
    others = {f"o{k}": random_dna(5 + 9 * k, seed=10 + k) for k in range(3)}
    alone = _ingest(tmp_path, char_gpt, {"s": seq}, name="alone")
    batch = _ingest(tmp_path, char_gpt, {**others, "s": seq}, name="batch")
    a = alone.sql("select logp from positions where seq_id = 's' order by pos").to_pylist()
    b = batch.sql("select logp from positions where seq_id = 's' order by pos").to_pylist()
    assert np.allclose([r["logp"] for r in a], [r["logp"] for r in b], atol=1e-5)
    # pooled: means only (a causal model's BOS state has seen no residue), batch-independent
    assert alone.manifest.pooling["poolings"] == ["mean"]
    va, vb = ([r["vector"] for r in atlas.pooled().to_pylist() if r["seq_id"] == "s"]
              for atlas in (alone, batch))
    assert len(va) == len(vb) == 1
    assert np.allclose(np.asarray(va[0], np.float32), np.asarray(vb[0], np.float32), rtol=1e-3,
                       atol=1e-3)


def _bpe_brute_force(model, tokenizer, residues: str) -> list[float]:
    """Per base: the marginal of its letter at its offset among next tokens of the true
    token's length, given BOS and the tokens before it."""
    encoding = tokenizer.encode(residues)
    ids = torch.tensor([[0] + encoding.ids])
    with torch.no_grad():
        probs_all = torch.softmax(model(ids).logits[0, :-1].double(), dim=-1)
    vocab = tokenizer.get_vocab()
    out = [math.nan] * len(residues)
    for t, ((start, end), _) in enumerate(zip(encoding.offsets, encoding.ids)):
        length = end - start
        cands = [(i, w) for w, i in vocab.items()
                 if len(w) == length and set(w) <= set(DNA)]
        p = probs_all[t, [i for i, _ in cands]]
        p = p / p.sum()
        for o in range(length):
            mass = {c: sum(float(p[j]) for j, (_, w) in enumerate(cands) if w[o] == c)
                    for c in DNA}
            total = sum(mass.values())
            out[start + o] = math.log(mass[residues[start + o]] / total)
    return out


def test_bpe_causal_per_base_marginal_equals_brute_force(tmp_path, bpe_gpt):
    from tokenizers import Tokenizer

    seq = random_dna(40, seed=4)
    atlas = _ingest(tmp_path, bpe_gpt, {"s": seq}, window=20, overlap=5)
    tokenizer = Tokenizer.from_file(str(bpe_gpt / "tokenizer.json"))
    model = _model(bpe_gpt)
    rows = atlas.positions().sort_by("pos").to_pylist()
    cache = {}
    for r in rows:
        ws, we = r["window_start"], r["window_end"]
        if (ws, we) not in cache:
            cache[ws, we] = _bpe_brute_force(model, tokenizer, seq[ws:we])
        assert r["logp"] == pytest.approx(cache[ws, we][r["pos"] - ws], abs=1e-5)


def test_masked_modes_refused_for_causal_models_and_the_reverse(tmp_path, char_gpt):
    fasta = write_fasta(tmp_path / "x.fa", {"s": random_dna(20, seed=5)})
    for mode in ("exact", "fast", "unmasked"):
        with pytest.raises(ConfigError, match="causal.*no mask token.*--likelihood causal"):
            seqatlas.ingest(fasta, atlas=tmp_path / mode, model=str(char_gpt), workers=0,
                            progress=False, likelihood=mode)
    from tests.dna_models import make_single

    masked = make_single(tmp_path / "masked")
    with pytest.raises(ConfigError, match="needs a causal .* model"):
        seqatlas.ingest(fasta, atlas=tmp_path / "m", model=str(masked), workers=0,
                        progress=False, likelihood="causal")
    assert not (tmp_path / "m").exists() and not (tmp_path / "exact").exists()
    # the masked adapter named for a causal checkpoint says which adapter reads it
    with pytest.raises(ModelError, match="transformers-causal"):
        resolve_model(str(char_gpt), kind="dna", adapter="transformers")


def test_cli_ingests_a_causal_model_like_the_api(tmp_path, char_gpt, capsys):
    from typer.testing import CliRunner

    from seqatlas.cli.main import app, main

    seq = random_dna(30, seed=6)
    api = _ingest(tmp_path, char_gpt, {"s": seq}, name="api")
    fasta = write_fasta(tmp_path / "c.fa", {"s": seq})
    result = CliRunner().invoke(app, ["ingest", str(fasta), "--atlas", str(tmp_path / "cli"),
                                      "--model", str(char_gpt), "--workers", "0",
                                      "--progress", "none", "--kind", "dna"])
    assert result.exit_code == 0, result.output
    cli = seqatlas.Atlas(tmp_path / "cli")
    query = "select pos, logp from positions order by pos"
    assert cli.sql(query).to_pylist() == api.sql(query).to_pylist()
    capsys.readouterr()
    assert main(["ingest", str(fasta), "--atlas", str(tmp_path / "no"), "--model",
                 str(char_gpt), "--likelihood", "exact", "--workers", "0", "--progress",
                 "none"]) == 1
    printed = capsys.readouterr()
    assert "Error:" in printed.err and "--likelihood causal" in printed.err
    assert "Traceback" not in printed.err + printed.out


# -- checkpoints that ship their own code ------------------------------------------------
_CONFIG_CODE = '''from transformers import GPT2Config


class TinyCodeConfig(GPT2Config):
    model_type = "tiny-code-gpt"
'''
_MODEL_CODE = '''from transformers import GPT2LMHeadModel

from .configuration_tiny import TinyCodeConfig


class TinyCodeForCausalLM(GPT2LMHeadModel):
    config_class = TinyCodeConfig
'''


def make_remote_code_gpt(directory: Path) -> Path:
    make_char_gpt(directory, seed=7)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="tiny-code-gpt", architectures=["TinyCodeForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyCodeConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyCodeForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_tiny.py").write_text(_CONFIG_CODE)
    (directory / "modeling_tiny.py").write_text(_MODEL_CODE)
    return directory


def test_remote_code_needs_the_flag_and_its_hash_is_the_identity(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    model = make_remote_code_gpt(tmp_path / "code_gpt")
    seq = random_dna(20, seed=8)  # one window: the reference is one pass
    fasta = write_fasta(tmp_path / "r.fa", {"s": seq})
    with pytest.raises(ModelError, match="--trust-remote-code"):
        seqatlas.ingest(fasta, atlas=tmp_path / "r", model=str(model), workers=0,
                        progress=False, kind="dna")
    assert not (tmp_path / "r").exists()
    with _nothing():
        seqatlas.ingest(fasta, atlas=tmp_path / "r", model=str(model), workers=0,
                        progress=False, kind="dna", trust_remote_code=True)
    atlas = seqatlas.Atlas(tmp_path / "r")
    record = atlas.manifest.model.extra
    assert len(record["code_sha256"]) == 64 and record["objective"] == "causal"
    from seqatlas.cli.main import main

    assert main(["info", str(tmp_path / "r")]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "adapter transformers-causal, causal LM, its own code sha256 " \
        f"{record['code_sha256'][:12]}" in shown
    reference = _char_logp(_model_with_code(model), seq)
    logp = [r["logp"] for r in atlas.sql("select logp from positions order by pos").to_pylist()]
    assert np.allclose(logp, reference, atol=1e-5)
    # changed code is another model: extending the atlas with it is refused
    (model / "modeling_tiny.py").write_text(_MODEL_CODE + "\n# edited\n")
    more = write_fasta(tmp_path / "more.fa", {"t": random_dna(12, seed=9)})
    with pytest.raises(AtlasMismatchError, match="code_sha256"):
        seqatlas.ingest(more, atlas=tmp_path / "r", workers=0, progress=False,
                        trust_remote_code=True)


def _model_with_code(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()


# -- third-party adapters ----------------------------------------------------------------
_PLUGIN = '''from seqatlas.checkpoints.hf_masked import TransformersMaskedAdapter


class LabAdapter(TransformersMaskedAdapter):
    """A lab's own adapter: transformers masked LMs whose directory holds LAB_MODEL."""

    name = "lab-bert"
    description = "a test plugin"
    checkpoint = "a directory with a LAB_MODEL file"

    def claims(self, path):
        return (path / "LAB_MODEL").exists()

    def resolve(self, request):
        from dataclasses import replace

        return replace(super().resolve(request), adapter=self.name)
'''


def test_an_entry_point_adapter_is_listed_detected_and_used(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seqatlas.cli.main import app
    from tests.dna_models import make_single

    site = tmp_path / "site"
    (site / "lab_plugin").mkdir(parents=True)
    (site / "lab_plugin" / "__init__.py").write_text(_PLUGIN)
    dist = site / "lab_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[seqatlas.models]\nlab-bert = lab_plugin:LabAdapter\n")
    monkeypatch.syspath_prepend(str(site))
    listed = CliRunner().invoke(app, ["models", "--adapters", "--format", "tsv"])
    assert listed.exit_code == 0 and "lab-bert\t" in listed.output
    assert "lab-bert" in [a["adapter"] for a in seqatlas.adapters()]
    model = make_single(tmp_path / "lab_model")
    (model / "LAB_MODEL").write_text("")
    spec = resolve_model(str(model), kind="dna")  # detected: plugins are asked first
    assert spec.adapter == "lab-bert"
    seq = random_dna(15, seed=11)
    atlas = _ingest(tmp_path, model, {"s": seq}, name="lab", likelihood="exact")
    assert atlas.manifest.model.extra["adapter"] == "lab-bert"
    plain = _ingest(tmp_path, model, {"s": seq}, name="plain", likelihood="exact",
                    adapter="transformers")
    query = "select logp from positions order by pos"
    assert atlas.sql(query).to_pylist() == plain.sql(query).to_pylist()
    with pytest.raises(ModelError, match="unknown model adapter 'nope'.*lab-bert"):
        resolve_model(str(model), kind="dna", adapter="nope")


def test_an_adapter_whose_package_is_missing_names_the_extra(monkeypatch):
    from seqatlas.checkpoints.registry import get_adapter

    adapter = get_adapter("carp")
    monkeypatch.setattr(type(adapter), "packages", ("surely_not_installed_package",))
    with pytest.raises(ModelError, match=r"pip install 'seqatlas\[carp\]'"):
        adapter.require()
    row = next(a for a in seqatlas.adapters() if a["adapter"] == "carp")
    assert row["installed"] is False and "seqatlas[carp]" in row["install"]


# -- the probes know the direction ---------------------------------------------------------
COPY_LENGTH = 8
MAX_PREFIX = 10  # training blocks: a random prefix of 0..10 bases, S, S again


def _train_copier(directory: Path, steps: int = 300) -> Path:
    """A tiny GPT-2 trained to continue P+S+S: after a random block S, S again."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(CHAR_VOCAB) + "\n")
    torch.manual_seed(0)
    length = 1 + MAX_PREFIX + 2 * COPY_LENGTH
    config = GPT2Config(vocab_size=len(CHAR_VOCAB), n_positions=length, n_embd=48,
                        n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    model = GPT2LMHeadModel(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        prefix = int(torch.randint(0, MAX_PREFIX + 1, (1,), generator=generator))
        block = torch.randint(2, 6, (64, COPY_LENGTH), generator=generator)
        head = torch.randint(2, 6, (64, prefix), generator=generator)
        ids = torch.cat([torch.zeros(64, 1, dtype=torch.long), head, block, block], dim=1)
        labels = ids.clone()
        labels[:, : 1 + prefix + COPY_LENGTH] = -100  # learn the copy, not the noise
        loss = model(ids, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    return _train_copier(tmp_path_factory.mktemp("copier"))


@pytest.mark.slow
def test_doubling_probe_of_a_trained_copier_sees_only_the_upstream_copy(tmp_path, copier):
    from seqatlas.probe import probe_doubling

    fasta = write_fasta(tmp_path / "s.fa", {f"s{k}": random_dna(COPY_LENGTH, seed=20 + k)
                                            for k in range(6)})
    common = {"model": str(copier), "kind": "dna", "progress": False}
    second = probe_doubling(fasta, **common).to_pylist()  # copy 2: the causal default
    first = probe_doubling(fasta, copy=1, **common).to_pylist()
    assert {r["scored_copy"] for r in second} == {2} and {r["method"] for r in second} == \
        {"shuffle"}
    gain2 = np.mean([r["icl_gain"] for r in second])
    control2 = np.mean([r["control_gain"] for r in second])
    gain1 = np.mean([r["icl_gain"] for r in first])
    assert gain2 > 0.8  # copy 2 is predicted from copy 1
    assert abs(gain1) < 1e-5  # copy 1 cannot see copy 2: exactly nothing
    assert abs(control2) < 0.25 * gain2  # a same-composition block gives little
    with pytest.raises(ConfigError, match="no mask token"):
        probe_doubling(fasta, method="mask", **common)


@pytest.mark.slow
def test_icl_probe_of_a_causal_atlas_takes_upstream_copies_and_controls(tmp_path, copier):
    from seqatlas.probe import probe_icl

    records = {}
    for k in range(4):
        block = random_dna(COPY_LENGTH, seed=40 + k)
        records[f"r{k}"] = random_dna(MAX_PREFIX, seed=60 + k) + block + block
    atlas = _ingest(tmp_path, copier, records, copy_k=6)
    assert atlas.manifest.scoring.likelihood == "causal"
    with pytest.raises(ConfigError, match="no mask token"):
        probe_icl(atlas.path, method="mask", workers=0, progress=False)
    report = probe_icl(atlas.path, workers=0, progress=False)
    assert report.likelihood == "causal" and report.method == "shuffle"
    rows = seqatlas.Atlas(atlas.path).sql(
        "select * from ablations order by seq_id, pos").to_pylist()
    assert rows and report.targets_probed == len({(r["seq_id"], r["target_start"])
                                                  for r in rows})
    # copy 1's targets (their partner, copy 2, downstream) are never probed; copy 2's are
    assert {r["seq_id"] for r in rows if r["pos"] >= MAX_PREFIX + COPY_LENGTH} == set(records)
    for r in rows:
        assert r["partner_end"] <= r["target_start"]
        if r["control_start"] is not None:
            assert r["control_end"] <= r["target_start"]  # an upstream control
    gains = [r["icl_gain"] for r in rows]
    controls = [r["control_gain"] for r in rows if r["control_gain"] is not None]
    assert np.mean(gains) > 0.8 and controls and abs(np.mean(controls)) < 0.25 * np.mean(gains)


def test_knn_embeds_a_query_with_the_causal_model(tmp_path, char_gpt):
    seq = random_dna(20, seed=12)
    atlas = _ingest(tmp_path, char_gpt, {"s": seq}, name="knn")
    seqatlas.build_index(atlas.path, progress=False)
    with pytest.raises(seqatlas.SeqAtlasError, match="built after this reader opened"):
        atlas.knn(sequence=seq, offset=12, k=3)  # a reader is a snapshot of its version
    assert atlas.refresh() and not atlas.refresh()
    hits = atlas.knn(sequence=seq, offset=12, k=3).to_pylist()
    # the query is the stored sequence itself: its own token is the nearest (cosine 1), and
    # the join shows the causal logp (the atlas's likelihood column)
    assert hits[0]["seq_id"] == "s" and hits[0]["start"] == 12
    assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-2)
    stored = atlas.sql("select logp from positions where pos = 12").to_pylist()[0]["logp"]
    assert hits[0]["logp"] == pytest.approx(stored)


def test_variants_of_a_causal_atlas_stored_or_rescored(tmp_path, char_gpt):
    from seqatlas.variants.score import score_variants

    seq = random_dna(40, seed=13)
    stored = _ingest(tmp_path, char_gpt, {"s": seq}, name="stored")
    bare = _ingest(tmp_path, char_gpt, {"s": seq}, name="bare", distributions="none")
    alt = {c: next(x for x in DNA if x != c) for c in DNA}
    mutants = [f"{seq[i]}{i + 1}{alt[seq[i]]}" for i in (0, 9, 25, 39)]
    a = score_variants(mutants, atlas=stored.path, seq_id="s").table.to_pylist()
    b = score_variants(mutants, atlas=bare.path, seq_id="s").table.to_pylist()
    assert [r["distribution"] for r in b] == ["rescored"] * 4
    model = _model(char_gpt)
    for ra, rb, mutant in zip(a, b, mutants):
        i = int(mutant[1:-1]) - 1
        row = stored.sql(f"select window_start, window_end from positions where pos = {i}"
                         ).to_pylist()[0]
        window = seq[row["window_start"]:row["window_end"]]
        ids = torch.tensor([[0] + [CHAR_VOCAB.index(c) for c in window]])
        with torch.no_grad():
            logits = model(ids).logits[0, i - row["window_start"]]
        lp = torch.log_softmax(logits[[CHAR_VOCAB.index(c) for c in DNA]].double(), dim=-1)
        expected = (lp[DNA.index(mutant[-1])] - lp[DNA.index(mutant[0])]).item()
        assert ra["llr"] == pytest.approx(expected, abs=1e-5)
        assert rb["llr"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="--joint"):
        score_variants(mutants, atlas=stored.path, seq_id="s", joint=True)
