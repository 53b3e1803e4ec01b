"""The fair-esm adapter against fair-esm's own models: tiny random ESM-2, ESM-1b and ESM-1
built from the package's classes, saved as torch hub caches the real ones (with their
``-contact-regression.pt`` companions), and loaded back by the package's own
``load_model_and_alphabet_local`` as the reference."""

from __future__ import annotations

import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas.checkpoints import load_model, resolve_model
from seqatlas.checkpoints.fair_esm import FairEsmAdapter
from seqatlas.errors import ModelError
from tests.conftest import AMINO, random_protein, write_fasta

pytest.importorskip("esm")
# random models score below the uniform baseline
pytestmark = pytest.mark.filterwarnings("ignore:model .* may be out of domain")

ROOT = Path(__file__).resolve().parents[1]
SEQS = {"long": random_protein(90, 31), "b": random_protein(25, 32), "c": random_protein(33, 33)}
LAYERS, DIM, HEADS = 2, 32, 4
ESM1B_POSITIONS = 40  # ESM-1b's learned position table: its context, so "long" is cut
# ESM-2's context is 1024 tokens: a window cuts "long"
WINDOWS = {"esm2": {"window": 40, "overlap": 10}, "esm1b": {}, "esm1": {"window": 40,
                                                                        "overlap": 10}}
FILES = {"esm2": "esm2_t2_tiny_UR50D.pt", "esm1b": "esm1b_t2_tiny_UR50S.pt",
         "esm1": "esm1_t2_tiny_UR50S.pt"}


def _perturb(model, seed: int, embeddings: float = 1.0) -> None:
    """Away from the initial layer norms; ``embeddings`` scales the token embeddings (the
    LM head's tied weights: N(0, 1) at initialisation, so near one-hot predictions)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
        model.embed_tokens.weight.mul_(embeddings)


def _save(path: Path, state: dict, extra: dict, *, layers: int = LAYERS, heads: int = HEADS):
    """The checkpoint and its contact-regression companion, as torch hub caches them."""
    import torch

    torch.save({"model": state, **extra}, path)
    torch.manual_seed(99)
    torch.save({"model": {"contact_head.regression.weight": torch.randn(1, layers * heads),
                          "contact_head.regression.bias": torch.zeros(1)}},
               str(path.with_suffix("")) + "-contact-regression.pt")
    return path


def _prefixed(model, body: str, head: str) -> dict:
    """The model's state dict under the fairseq prefixes fair-esm's loader strips."""
    return {(head if k.startswith("lm_head.") else body) + k: v.clone()
            for k, v in model.state_dict().items() if not k.startswith("contact_head.")}


def make_esm2(path: Path, seed: int = 0) -> Path:
    import esm
    import torch
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS,
                 alphabet=esm.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    _perturb(model, seed, embeddings=0.2)
    cfg = {"model": Namespace(_name="ESM2", encoder_layers=LAYERS, encoder_embed_dim=DIM,
                              encoder_ffn_embed_dim=4 * DIM, encoder_attention_heads=HEADS,
                              token_dropout=True, max_positions=1024)}
    return _save(path, _prefixed(model, "encoder.sentence_encoder.", "encoder."), {"cfg": cfg})


def make_esm1b(path: Path, seed: int = 1) -> Path:
    import esm
    import torch

    torch.manual_seed(seed)
    args = Namespace(arch="roberta_large", encoder_layers=LAYERS, encoder_embed_dim=DIM,
                     encoder_ffn_embed_dim=2 * DIM, encoder_attention_heads=HEADS,
                     max_positions=ESM1B_POSITIONS, token_dropout=True,
                     emb_layer_norm_before=True)
    model = esm.ProteinBertModel(Namespace(
        arch="roberta_large", layers=LAYERS, embed_dim=DIM, ffn_embed_dim=2 * DIM,
        attention_heads=HEADS, max_positions=ESM1B_POSITIONS, token_dropout=True,
        emb_layer_norm_before=True), esm.Alphabet.from_architecture("ESM-1b"))
    _perturb(model, seed, embeddings=0.2)
    return _save(path, _prefixed(model, "encoder.sentence_encoder.", "encoder."),
                 {"args": args})


def make_esm1(path: Path, seed: int = 2) -> Path:
    import esm
    import torch

    torch.manual_seed(seed)
    args = Namespace(arch="protein_bert_base", decoder_layers=LAYERS, decoder_embed_dim=DIM,
                     decoder_ffn_embed_dim=2 * DIM, decoder_attention_heads=HEADS,
                     final_bias=True, max_positions=1024)
    model = esm.ProteinBertModel(Namespace(
        arch="protein_bert_base", layers=LAYERS, embed_dim=DIM, ffn_embed_dim=2 * DIM,
        attention_heads=HEADS, final_bias=True, max_positions=1024),
        esm.Alphabet.from_architecture("ESM-1"))
    _perturb(model, seed)
    state = {"decoder." + k: v.clone() for k, v in model.state_dict().items()
             if not k.startswith("contact_head.")}
    return _save(path, state, {"args": args})


MAKERS = {"esm2": make_esm2, "esm1b": make_esm1b, "esm1": make_esm1}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("hub") / "checkpoints"
    directory.mkdir()
    return {arch: MAKERS[arch](directory / FILES[arch]) for arch in FILES}


@pytest.fixture(scope="module")
def packages(files) -> dict:
    """The package's own models, by its own local loader (torch >= 2.6 needs the
    Namespace allowed: the loader leaves weights_only at its default)."""
    import esm.pretrained
    import torch

    loaded = {}
    with torch.serialization.safe_globals([Namespace]):
        for arch, path in files.items():
            model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
            loaded[arch] = (model.eval(), alphabet)
    return loaded


def _tokens(package, seq: str):
    return package[1].get_batch_converter()([("x", seq)])[2]


def _forward(package, tokens, layers=()):
    import torch

    with torch.no_grad():
        return package[0](tokens, repr_layers=list(layers))


def _amino_logp(package, logits, true_ids):
    """log p(true) over the 20 standard amino-acid tokens, per row of ``logits``."""
    import torch

    alphabet = package[1]
    ids = torch.tensor([alphabet.get_idx(a) for a in AMINO])
    letters = [AMINO.index(alphabet.get_tok(int(t))) for t in true_ids]
    lp = torch.log_softmax(logits[:, ids].double(), dim=-1)
    return lp[torch.arange(len(letters)), letters].numpy()


def brute_force_masked(package, window: str) -> np.ndarray:
    """Each residue masked in turn with the package's <mask>, in the package's own
    <cls> ... <eos> tokens; the package's forward on each."""
    src = _tokens(package, window)[0]
    where = np.arange(len(window)) + 1  # after <cls>
    rows = src.repeat(len(window), 1)
    rows[range(len(window)), where] = package[1].mask_idx
    logits = _forward(package, rows)["logits"]
    return _amino_logp(package, logits[range(len(window)), where], src[where])


def brute_force_unmasked(package, window: str) -> np.ndarray:
    src = _tokens(package, window)
    logits = _forward(package, src)["logits"][0, 1 : len(window) + 1]
    return _amino_logp(package, logits, src[0, 1 : len(window) + 1])


def representations(package, seq: str, layers) -> dict:
    out = _forward(package, _tokens(package, seq), layers)["representations"]
    return {layer: out[layer][0, 1 : len(seq) + 1].numpy() for layer in layers}


def _by_window(table, column: str) -> dict:
    found: dict = {}
    for row in table.to_pylist():
        key = (row["seq_id"], row["window_start"], row["window_end"])
        found.setdefault(key, {})[row["pos"]] = row[column]
    return found


def _check_windows(package, table, column: str, reference) -> int:
    checked = 0
    for (seq_id, start, end), got in _by_window(table, column).items():
        expected = reference(package, SEQS[seq_id][start:end])
        for pos, value in got.items():
            assert value == pytest.approx(expected[pos - start], abs=1e-5), (seq_id, pos)
            checked += 1
    return checked


def _embeddings(atlas: Path, seq_id: str, column: str = "embedding") -> np.ndarray:
    rows = sorted((r for r in seqatlas.Atlas(atlas).tokens().to_pylist()
                   if r["seq_id"] == seq_id), key=lambda r: r["start"])
    return np.array([r[column] for r in rows], np.float32)


def _close(got, expected) -> None:
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=2e-3 * max(1.0, float(np.abs(expected).max())))


@pytest.fixture(scope="module")
def exact_atlases(files, tmp_path_factory) -> dict[str, Path]:
    atlases = {}
    for arch, path in files.items():
        tmp = tmp_path_factory.mktemp(f"exact_{arch}")
        fasta = write_fasta(tmp / "p.fa", SEQS)
        seqatlas.ingest(fasta, atlas=tmp / "atlas", model=str(path), adapter="fair-esm",
                        likelihood="exact", workers=0, progress=False, **WINDOWS[arch])
        atlases[arch] = tmp / "atlas"
    return atlases


@pytest.mark.parametrize("arch", ["esm2", "esm1b", "esm1"])
def test_exact_logp_matches_the_package_masked_brute_force(arch, exact_atlases, packages):
    positions = seqatlas.Atlas(exact_atlases[arch]).positions()
    assert positions.num_rows == sum(map(len, SEQS.values()))
    windows = {k for k in _by_window(positions, "logp") if k[0] == "long"}
    assert len(windows) > 1  # the long protein was cut
    if arch == "esm1b":  # the learned positions' table is the context: <cls>, <eos> and 38
        assert max(end - start for _, start, end in _by_window(positions, "logp")) == 38
    package = packages[arch]
    assert _check_windows(package, positions, "logp", brute_force_masked) == positions.num_rows
    logp = np.array(positions.column("logp").to_pylist())
    assert logp.std() > 0.3  # the tiny model's predictions are not flat


@pytest.mark.parametrize("arch", ["esm2", "esm1b", "esm1"])
def test_embeddings_are_the_package_final_representation(arch, exact_atlases, packages):
    for seq_id in ("b", "c"):  # one window each
        expected = representations(packages[arch], SEQS[seq_id], [LAYERS])[LAYERS]
        _close(_embeddings(exact_atlases[arch], seq_id), expected)


def test_the_final_representation_is_what_the_lm_head_reads(files, packages):
    """ESM-2's and ESM-1b's last representation is after emb_layer_norm_after: the head
    applied to it gives the package's logits."""
    import torch

    for arch in ("esm2", "esm1b"):
        tokens = _tokens(packages[arch], SEQS["c"])
        out = _forward(packages[arch], tokens, [LAYERS])
        model = load_model(resolve_model(str(files[arch]), kind="protein"))
        with torch.inference_mode():
            last, _ = model.encode(tokens, torch.ones_like(tokens), None)
            assert torch.allclose(last, out["representations"][LAYERS], atol=1e-5)
            assert torch.allclose(model.head_logits(last[0]), out["logits"][0], atol=1e-5)


def test_layers_match_the_package_representations(files, packages, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", {k: SEQS[k] for k in ("b", "c")})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(files["esm2"]), adapter="fair-esm",
                    likelihood="none", layer=[0, 1, 2], workers=0, progress=False)
    columns = {0: "embedding", 1: "embedding_layer_1", 2: "embedding_layer_2"}
    for seq_id in ("b", "c"):
        expected = representations(packages["esm2"], SEQS[seq_id], [0, 1, 2])
        for layer, column in columns.items():
            _close(_embeddings(tmp_path / "a", seq_id, column), expected[layer])


@pytest.mark.parametrize("arch", ["esm2", "esm1b"])
def test_unmasked_logp_matches_one_package_forward(arch, files, packages, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", SEQS)
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(files[arch]), adapter="fair-esm",
                    likelihood="unmasked", embeddings=False, workers=0, progress=False,
                    **WINDOWS[arch])
    positions = seqatlas.Atlas(tmp_path / "a").positions()
    assert _check_windows(packages[arch], positions, "logp_unmasked",
                          brute_force_unmasked) == positions.num_rows


@pytest.mark.parametrize("arch", ["esm2", "esm1b"])
def test_padding_does_not_reach_real_positions(arch, files, packages):
    """Padded after, in a batch with a longer protein, a protein's hidden states and logits
    are its own: fair-esm masks padding_idx out of attention, positions and token dropout."""
    import torch

    package = packages[arch]
    short, longer = SEQS["b"], SEQS["c"]
    alone = _tokens(package, short)
    batch = package[1].get_batch_converter()([("s", short), ("l", longer)])[2]
    assert batch.shape[1] > alone.shape[1] and batch[0, -1] == package[1].padding_idx
    masked = batch.clone()  # token dropout rescales by the masked share of real tokens
    masked[:, 5] = package[1].mask_idx
    alone_masked = alone.clone()
    alone_masked[:, 5] = package[1].mask_idx
    n = alone.shape[1]

    spec = resolve_model(str(files[arch]), kind="protein", adapter="fair-esm")
    assert spec.specials.pad == package[1].padding_idx
    model = load_model(spec)
    with torch.inference_mode():
        for b_ids, a_ids in ((batch, alone), (masked, alone_masked)):
            attention = (b_ids != package[1].padding_idx).long()
            last_b, layers_b = model.encode(b_ids, attention, [0, 1, 2])
            last_a, layers_a = model.encode(a_ids, torch.ones_like(a_ids), [0, 1, 2])
            assert torch.allclose(last_b[0, :n], last_a[0], atol=1e-5)
            for b, a in zip(layers_b, layers_a):
                assert torch.allclose(b[0, :n], a[0], atol=1e-5)
            ids = torch.arange(4, 24)
            assert torch.allclose(model.token_logits(last_b[0, :n], ids),
                                  model.token_logits(last_a[0], ids), atol=1e-5)
            assert torch.allclose(model.head_logits(last_a[0]),
                                  _forward(package, a_ids)["logits"][0], atol=1e-5)


@pytest.mark.parametrize("arch", ["esm2", "esm1b"])
def test_scores_alone_and_in_a_padded_batch_are_the_same(arch, files, tmp_path):
    alone = write_fasta(tmp_path / "alone.fa", {"b": SEQS["b"]})
    mixed = write_fasta(tmp_path / "mixed.fa", {"x": random_protein(36, 41), "b": SEQS["b"],
                                                "y": random_protein(30, 42)})
    for name, fasta in (("alone", alone), ("mixed", mixed)):
        # one batch: every row padded to the longest protein's tokens
        seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(files[arch]),
                        adapter="fair-esm", likelihood="exact", batch_tokens=1 << 20,
                        workers=0, progress=False)

    def rows(name):
        table = seqatlas.Atlas(tmp_path / name).positions()
        return sorted((r for r in table.to_pylist() if r["seq_id"] == "b"),
                      key=lambda r: r["pos"])

    got, expected = rows("mixed"), rows("alone")
    assert [r["pos"] for r in got] == [r["pos"] for r in expected] == list(range(25))
    for a, b in zip(got, expected):
        assert a["logp"] == pytest.approx(b["logp"], abs=1e-5)
        assert a["logp_unmasked"] == pytest.approx(b["logp_unmasked"], abs=1e-5)


@pytest.mark.parametrize("arch", ["esm2", "esm1b", "esm1"])
def test_resolve_detects_and_describes_the_checkpoint(arch, files, packages):
    model, alphabet = packages[arch]
    spec = resolve_model(str(files[arch]), kind="protein")
    assert spec.adapter == "fair-esm" and spec.model_type == arch and spec.source == "file"
    assert spec.path == str(files[arch].resolve())
    assert spec.family == "single" and spec.k == 1
    assert spec.vocab == alphabet.tok_to_idx
    assert spec.specials.prefix == (alphabet.cls_idx,)
    assert spec.specials.suffix == ((alphabet.eos_idx,) if arch != "esm1" else ())
    assert (spec.specials.mask, spec.specials.pad, spec.specials.unk) == (
        alphabet.mask_idx, alphabet.padding_idx, alphabet.unk_idx)
    assert spec.hidden_size == DIM and spec.num_layers == LAYERS
    assert spec.context_tokens == (ESM1B_POSITIONS if arch == "esm1b" else 1024)
    # the package's model, contact head included (as transformers counts ESM)
    assert spec.parameters == sum(p.numel() for p in model.parameters())
    assert spec.options == {}
    assert len(spec.weights_sha256) == 64
    assert spec.describe()["adapter"] == "fair-esm"
    tokenizer = spec.tokenizer()
    assert tokenizer.scored_letters == AMINO + "UO"  # ESM's selenocysteine, pyrrolysine


def test_needs_no_contact_regression_file_and_reads_renamed_files(files, tmp_path):
    adapter = FairEsmAdapter()
    for arch in ("esm2", "esm1b"):
        renamed = Path(shutil.copy(files[arch], tmp_path / f"weights_{arch}.pt"))
        assert adapter.claims(renamed)  # by the pickled layout
        spec = resolve_model(str(renamed), kind="protein")
        assert spec.adapter == "fair-esm" and spec.model_type == arch
        assert spec.weights_sha256 == resolve_model(str(files[arch]), kind="protein"
                                                    ).weights_sha256
        load_model(spec)
    esm1v = Path(shutil.copy(files["esm1b"], tmp_path / "esm1v_t2_tiny_UR90S_1.pt"))
    assert resolve_model(str(esm1v), kind="protein").model_type == "esm1v"


def test_claims_fair_esm_files_only(files, tmp_path):
    import torch

    adapter = FairEsmAdapter()
    for path in files.values():
        assert adapter.claims(path)
        companion = Path(str(path.with_suffix("")) + "-contact-regression.pt")
        assert companion.is_file() and not adapter.claims(companion)
    carp = tmp_path / "weights.pt"  # sequence-models' CARP layout
    torch.save({"model": "carp_640M", "d_model": 16, "model_state_dict": {
        "embedder.embedder.weight": torch.zeros(30, 8)}}, carp)
    assert not adapter.claims(carp)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert not adapter.claims(tmp_path / "notes.pt")
    assert not adapter.claims(tmp_path)
    assert not adapter.claims(tmp_path / "missing.pt")
    shutil.copy(files["esm2"], tmp_path / "esm2_t2_tiny_UR50D.txt")
    assert not adapter.claims(tmp_path / "esm2_t2_tiny_UR50D.txt")
    legacy = tmp_path / "legacy.pt"  # torch's pre-zip format, still read by its layout
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(2)},
                "args": Namespace(arch="roberta_large")}, legacy,
               _use_new_zipfile_serialization=False)
    assert adapter.claims(legacy)


def test_refuses_dna_and_bad_files(files, tmp_path):
    import torch

    for kind in ("dna", "rna"):
        with pytest.raises(ModelError, match="protein model"):
            resolve_model(str(files["esm2"]), kind=kind, adapter="fair-esm")
        with pytest.raises(ModelError, match="protein model"):
            resolve_model(str(files["esm2"]), kind=kind)
    corrupt = tmp_path / "esm2_corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    truncated = tmp_path / "esm2_truncated.pt"
    truncated.write_bytes(files["esm2"].read_bytes()[: files["esm2"].stat().st_size // 2])
    wrong_keys = tmp_path / "esm1b_wrong.pt"
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 4)},
                "args": Namespace(arch="roberta_large", encoder_layers=1, encoder_embed_dim=4,
                                  encoder_ffn_embed_dim=8, encoder_attention_heads=1,
                                  max_positions=10)}, wrong_keys)
    not_esm = tmp_path / "esm2_other.pt"
    torch.save({"state": {}}, not_esm)
    for bad in (corrupt, truncated, wrong_keys, not_esm):
        with pytest.raises(ModelError, match=str(bad)):
            resolve_model(str(bad), kind="protein")
    msa = tmp_path / "esm_msa1b_tiny.pt"
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 4)},
                "args": Namespace(arch="msa_transformer")}, msa)
    with pytest.raises(ModelError, match="MSA Transformer"):
        resolve_model(str(msa), kind="protein")


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "esm" else real(name, *a))
    adapter = FairEsmAdapter()
    with pytest.raises(ModelError, match=r"seqatlas\[fair-esm\]"):
        adapter.require()
    assert adapter.summary()["installed"] is False


def test_importing_the_adapter_imports_no_model_package():
    code = ("import sys, seqatlas.checkpoints.fair_esm\n"
            "print([m for m in ('esm', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_ingest_matches_the_api(files, exact_atlases, tmp_path):
    from typer.testing import CliRunner

    from seqatlas.cli.main import app

    fasta = write_fasta(tmp_path / "p.fa", SEQS)
    window = WINDOWS["esm2"]
    result = CliRunner().invoke(app, [
        "ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model", str(files["esm2"]),
        "--adapter", "fair-esm", "--window", str(window["window"]), "--overlap",
        str(window["overlap"]), "--workers", "0", "--progress", "none"])
    assert result.exit_code == 0, result.output
    key = ("seq_id", "pos")
    cli = {tuple(r[k] for k in key): r["logp"]
           for r in seqatlas.Atlas(tmp_path / "cli").positions().to_pylist()}
    api = {tuple(r[k] for k in key): r["logp"]
           for r in seqatlas.Atlas(exact_atlases["esm2"]).positions().to_pylist()}
    assert cli.keys() == api.keys()
    for k, value in api.items():
        assert cli[k] == pytest.approx(value, abs=1e-6)
