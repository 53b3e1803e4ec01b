"""The carp adapter against sequence-models' own CARP: a tiny random ByteNetLM saved as
``sequence_models.pretrained`` downloads CARP, loaded back by the package's own loader as
the reference."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas.checkpoints import load_model, resolve_model
from seqatlas.checkpoints.carp import CarpAdapter
from seqatlas.errors import ModelError
from tests.conftest import AMINO, random_protein, write_fasta

pytest.importorskip("sequence_models")
# a random model scores below the uniform baseline
pytestmark = pytest.mark.filterwarnings("ignore:model .* may be out of domain:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = {"d_embed": 8, "d_model": 16, "n_layers": 2, "kernel_size": 5, "r": 4,
                "activation": "gelu", "slim": True}
SEQS = {"long": random_protein(90, 11), "b": random_protein(25, 12), "c": random_protein(33, 13)}
WINDOW = {"window": 40, "overlap": 10}  # "long" is cut into windows


def make_carp(path: Path, seed: int = 0) -> Path:
    """A tiny CARP built as sequence_models.pretrained.load_carp builds one, saved in the
    layout of the downloaded files."""
    import torch
    from sequence_models.constants import MASK, PROTEIN_ALPHABET
    from sequence_models.convolutional import ByteNetLM

    a = ARCHITECTURE
    torch.manual_seed(seed)
    model = ByteNetLM(len(PROTEIN_ALPHABET), a["d_embed"], a["d_model"], a["n_layers"],
                      a["kernel_size"], a["r"], dropout=0.0, activation=a["activation"],
                      causal=False, padding_idx=PROTEIN_ALPHABET.index(MASK), final_ln=True,
                      slim=a["slim"])
    with torch.no_grad():  # away from the initial layer norms, and peaked predictions
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.decoder.conv.weight.mul_(4.0)
    torch.save({"model": "carp_tiny", **a, "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def carp_file(tmp_path_factory) -> Path:
    return make_carp(tmp_path_factory.mktemp("carp") / "carp_tiny.pt")


@pytest.fixture(scope="module")
def package(carp_file):
    """The package's own CARP (its wrapper around ByteNetLM) and collater."""
    from sequence_models.pretrained import load_model_and_alphabet

    model, collater = load_model_and_alphabet(str(carp_file))
    return model.eval(), collater


def _tokens(package, seq: str):
    return package[1]([(seq,)])[0]


def _forward(package, src):
    """ByteNetLM's logits with the package's padding mask."""
    import torch
    from sequence_models.constants import PAD, PROTEIN_ALPHABET

    with torch.no_grad():
        return package[0].model(src, input_mask=(src != PROTEIN_ALPHABET.index(PAD))
                                .unsqueeze(-1))


def _amino_logp(logits, true_ids):
    """log p(true) over the 20 standard amino-acid tokens, per row of ``logits``."""
    import torch
    from sequence_models.constants import PROTEIN_ALPHABET

    ids = torch.tensor([PROTEIN_ALPHABET.index(a) for a in AMINO])
    letters = [AMINO.index(PROTEIN_ALPHABET[int(t)]) for t in true_ids]
    lp = torch.log_softmax(logits[:, ids].double(), dim=-1)
    return lp[torch.arange(len(letters)), letters].numpy()


def brute_force_masked(package, window: str) -> np.ndarray:
    """Each residue masked in turn with the package's mask token, one forward each."""
    from sequence_models.constants import MASK, PROTEIN_ALPHABET

    src = _tokens(package, window)[0]
    rows = src.repeat(len(window), 1)
    rows[range(len(window)), range(len(window))] = PROTEIN_ALPHABET.index(MASK)
    logits = _forward(package, rows)
    return _amino_logp(logits[range(len(window)), range(len(window))], src)


def brute_force_unmasked(package, window: str) -> np.ndarray:
    src = _tokens(package, window)
    return _amino_logp(_forward(package, src)[0], src[0])


def representations(package, seq: str, layers) -> dict:
    """The package's own representations (its CARP wrapper; layer 0 it returns at top level)."""
    import torch

    with torch.no_grad():
        out = package[0](_tokens(package, seq), repr_layers=list(layers))
    return {layer: (out[0] if layer == 0 else out["representations"][layer])[0].numpy()
            for layer in layers}


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


@pytest.fixture(scope="module")
def exact_atlas(carp_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exact")
    fasta = write_fasta(tmp / "p.fa", SEQS)
    seqatlas.ingest(fasta, atlas=tmp / "atlas", model=str(carp_file), adapter="carp",
                    likelihood="exact", workers=0, progress=False, **WINDOW)
    return tmp / "atlas"


def test_exact_logp_matches_the_package_masked_brute_force(exact_atlas, package):
    positions = seqatlas.Atlas(exact_atlas).positions()
    assert positions.num_rows == sum(map(len, SEQS.values()))
    windows = {k for k in _by_window(positions, "logp") if k[0] == "long"}
    assert len(windows) > 1  # the long protein was cut
    assert _check_windows(package, positions, "logp", brute_force_masked) == positions.num_rows
    logp = np.array(positions.column("logp").to_pylist())
    assert logp.std() > 0.3  # the tiny model's predictions are not flat


def test_pooled_means_only_carp_has_no_bos(exact_atlas):
    atlas = seqatlas.Atlas(exact_atlas)
    assert atlas.manifest.pooling["poolings"] == ["mean"]
    tokens, pooled = atlas.tokens(), atlas.pooled().to_pylist()
    assert sorted(r["seq_id"] for r in pooled) == sorted(SEQS)
    for row in pooled:  # the long protein is cut into windows: still one mean over all
        x = np.array([t["embedding"] for t in tokens.to_pylist() if t["seq_id"] == row["seq_id"]],
                     np.float32)
        assert row["tokens"] == len(SEQS[row["seq_id"]]) == len(x)
        np.testing.assert_allclose(np.asarray(row["vector"], np.float32), x.mean(0), rtol=1e-3,
                                   atol=1e-3)


def test_embeddings_are_the_package_final_representation(exact_atlas, package):
    tokens = seqatlas.Atlas(exact_atlas).tokens().to_pylist()
    for seq_id in ("b", "c"):  # one window each
        got = np.array([r["embedding"] for r in tokens if r["seq_id"] == seq_id], np.float32)
        expected = representations(package, SEQS[seq_id], [2])[2]
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=2e-3 * max(1.0, float(np.abs(expected).max())))


def test_layers_match_the_package_representations(carp_file, package, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", {k: SEQS[k] for k in ("b", "c")})
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(carp_file), adapter="carp",
                    likelihood="none", layer=[0, 1, 2], workers=0, progress=False)
    tokens = seqatlas.Atlas(tmp_path / "a").tokens().to_pylist()
    columns = {0: "embedding", 1: "embedding_layer_1", 2: "embedding_layer_2"}
    for seq_id in ("b", "c"):
        expected = representations(package, SEQS[seq_id], [0, 1, 2])
        for layer, column in columns.items():
            got = np.array([r[column] for r in tokens if r["seq_id"] == seq_id], np.float32)
            np.testing.assert_allclose(
                got, expected[layer], rtol=0,
                atol=2e-3 * max(1.0, float(np.abs(expected[layer]).max())))


def test_unmasked_logp_matches_one_package_forward(carp_file, package, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", SEQS)
    seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(carp_file), adapter="carp",
                    likelihood="unmasked", embeddings=False, workers=0, progress=False,
                    **WINDOW)
    positions = seqatlas.Atlas(tmp_path / "a").positions()
    assert _check_windows(package, positions, "logp_unmasked",
                          brute_force_unmasked) == positions.num_rows


def test_padding_does_not_reach_real_positions(carp_file, package):
    """Alone or padded after in a batch with longer ones, a protein scores the same: each
    block's convolution zeroes its padded inputs. Without the mask padding would leak."""
    import torch
    from sequence_models.constants import PAD, PROTEIN_ALPHABET

    short, longer = SEQS["b"], SEQS["long"]
    alone = _tokens(package, short)
    batch = package[1]([(short,), (longer,)])[0]
    assert batch.shape[1] > alone.shape[1] and batch[0, -1] == PROTEIN_ALPHABET.index(PAD)
    n = len(short)
    with torch.no_grad():  # the package's model, no mask: padding changes the last positions
        leaky = package[0].model(batch)[0, :n] - package[0].model(alone)[0]
    assert leaky.abs().max() > 1e-3
    assert torch.allclose(_forward(package, batch)[0, :n], _forward(package, alone)[0],
                          atol=1e-5)

    spec = resolve_model(str(carp_file), kind="protein", adapter="carp")
    model = load_model(spec)
    attention = (batch != PROTEIN_ALPHABET.index(PAD)).long()
    with torch.inference_mode():
        last_b, layers_b = model.encode(batch, attention, [0, 1, 2])
        last_a, layers_a = model.encode(alone, torch.ones_like(alone), [0, 1, 2])
        assert torch.allclose(last_b[0, :n], last_a[0], atol=1e-5)
        for b, a in zip(layers_b, layers_a):
            assert torch.allclose(b[0, :n], a[0], atol=1e-5)
        ids = torch.arange(20)
        assert torch.allclose(model.token_logits(last_b[0, :n], ids),
                              model.token_logits(last_a[0], ids), atol=1e-5)
        # the head reads what the package's decoder reads
        assert torch.allclose(model.head_logits(last_a[0]), _forward(package, alone)[0],
                              atol=1e-5)


def test_scores_alone_and_in_a_padded_batch_are_the_same(carp_file, tmp_path):
    alone = write_fasta(tmp_path / "alone.fa", {"b": SEQS["b"]})
    mixed = write_fasta(tmp_path / "mixed.fa", {"x": random_protein(70, 21), "b": SEQS["b"],
                                                "y": random_protein(39, 22)})
    for name, fasta in (("alone", alone), ("mixed", mixed)):
        # one batch: every row padded to the longest protein's 70 tokens
        seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(carp_file), adapter="carp",
                        likelihood="exact", batch_tokens=1 << 20, workers=0, progress=False)

    def rows(name):
        table = seqatlas.Atlas(tmp_path / name).positions()
        return [r for r in table.to_pylist() if r["seq_id"] == "b"]

    got, expected = rows("mixed"), rows("alone")
    assert [r["pos"] for r in got] == [r["pos"] for r in expected] == list(range(25))
    for a, b in zip(got, expected):
        assert a["logp"] == pytest.approx(b["logp"], abs=1e-5)
        assert a["logp_unmasked"] == pytest.approx(b["logp_unmasked"], abs=1e-5)


def test_resolve_detects_and_describes_the_checkpoint(carp_file, package):
    from sequence_models.constants import MASK, PAD, PROTEIN_ALPHABET

    spec = resolve_model(str(carp_file), kind="protein")
    assert spec.adapter == "carp" and spec.model_type == "carp" and spec.source == "file"
    assert spec.path == str(carp_file.resolve())
    assert spec.family == "single" and spec.k == 1
    assert spec.specials.prefix == () and spec.specials.suffix == ()
    assert spec.specials.mask == PROTEIN_ALPHABET.index(MASK)
    assert spec.specials.pad == PROTEIN_ALPHABET.index(PAD)
    assert spec.specials.unk == PROTEIN_ALPHABET.index("X")
    assert spec.vocab == {t: i for i, t in enumerate(PROTEIN_ALPHABET)}
    assert spec.hidden_size == 16 and spec.num_layers == 2 and spec.context_tokens == 1024
    assert spec.parameters == sum(p.numel() for p in package[0].parameters())
    assert spec.options == {"model": "carp_tiny", **ARCHITECTURE}
    assert len(spec.weights_sha256) == 64
    assert spec.describe()["adapter"] == "carp"


def test_claims_by_name_or_layout_only(carp_file, tmp_path):
    import torch

    adapter = CarpAdapter()
    assert adapter.claims(carp_file)
    renamed = shutil.copy(carp_file, tmp_path / "weights.pt")
    assert adapter.claims(Path(renamed))  # by the dict's layout
    legacy = tmp_path / "legacy.pt"  # torch's pre-1.6 format, which cannot be memory-mapped
    torch.save(torch.load(carp_file), legacy, _use_new_zipfile_serialization=False)
    assert adapter.claims(legacy)
    assert resolve_model(str(legacy), kind="protein").parameters == \
        resolve_model(str(carp_file), kind="protein").parameters
    esm = tmp_path / "esm2_t6_8M_UR50D.pt"  # fair-esm's layout
    torch.save({"cfg": {"model": {"encoder_layers": 6}}, "model": {
        "encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 4)}}, esm)
    assert not adapter.claims(esm)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert not adapter.claims(tmp_path / "notes.pt")
    assert not adapter.claims(tmp_path)
    assert not adapter.claims(tmp_path / "missing.pt")
    shutil.copy(carp_file, tmp_path / "carp.txt")
    assert not adapter.claims(tmp_path / "carp.txt")


def test_refuses_dna_and_bad_files(carp_file, tmp_path):
    for kind in ("dna", "rna"):
        with pytest.raises(ModelError, match="protein model"):
            resolve_model(str(carp_file), kind=kind, adapter="carp")
    corrupt = tmp_path / "carp_corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    truncated = tmp_path / "carp_truncated.pt"
    truncated.write_bytes(carp_file.read_bytes()[: carp_file.stat().st_size // 2])
    for bad in (corrupt, truncated):
        with pytest.raises(ModelError, match=str(bad)):
            resolve_model(str(bad), kind="protein")
    import torch

    other = tmp_path / "carp_other.pt"
    torch.save({"model": "mif", "model_state_dict": {}}, other)
    with pytest.raises(ModelError, match="not a CARP checkpoint"):
        resolve_model(str(other), kind="protein", adapter="carp")


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sequence_models" else real(name, *a))
    adapter = CarpAdapter()
    with pytest.raises(ModelError, match=r"seqatlas\[carp\]"):
        adapter.require()
    assert adapter.summary()["installed"] is False


def test_importing_the_adapter_imports_no_model_package():
    code = ("import sys, seqatlas.checkpoints.carp\n"
            "print([m for m in ('sequence_models', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_ingest_matches_the_api(carp_file, exact_atlas, tmp_path):
    from typer.testing import CliRunner

    from seqatlas.cli.main import app

    fasta = write_fasta(tmp_path / "p.fa", SEQS)
    result = CliRunner().invoke(app, [
        "ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model", str(carp_file),
        "--adapter", "carp", "--window", str(WINDOW["window"]), "--overlap",
        str(WINDOW["overlap"]), "--workers", "0", "--progress", "none"])
    assert result.exit_code == 0, result.output
    key = ("seq_id", "pos")
    cli = {tuple(r[k] for k in key): r["logp"]
           for r in seqatlas.Atlas(tmp_path / "cli").positions().to_pylist()}
    api = {tuple(r[k] for k in key): r["logp"]
           for r in seqatlas.Atlas(exact_atlas).positions().to_pylist()}
    assert cli.keys() == api.keys()
    for k, value in api.items():
        assert cli[k] == pytest.approx(value, abs=1e-6)
