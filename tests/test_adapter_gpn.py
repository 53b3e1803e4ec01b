"""The gpn adapter against the gpn package's own models: tiny random ConvNet, GPN and
GPNRoFormer masked LMs built through gpn's classes, saved with save_pretrained beside the
tokenizer GPN's checkpoints ship (lowercase a c g t), loaded back through transformers'
Auto classes after gpn registers them, as the reference."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import seqatlas
from seqatlas.checkpoints import load_model, resolve_model
from seqatlas.checkpoints.gpn import GpnAdapter
from seqatlas.checkpoints.tokenizers import reverse_complement
from seqatlas.errors import ModelError
from tests.conftest import make_bert, write_fasta

pytest.importorskip("gpn")
# random weights predict random DNA worse than uniform, which ingest warns about
pytestmark = pytest.mark.filterwarnings("ignore:model .* may be out of domain")

ROOT = Path(__file__).resolve().parents[1]
WINDOW = {"window": 40, "overlap": 10}  # the 90-base sequence is cut into windows
ARCHITECTURES = ("convnet", "gpn", "roformer", "gpn_roformer")
ROFORMER_POSITIONS = 48


def random_dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(length))


SEQS = {"long": random_dna(90, 1), "b": random_dna(23, 2), "c": random_dna(31, 3)}


def write_gpn_tokenizer(directory: Path) -> None:
    """The tokenizer of GPN's checkpoints, built as gpn/ss/train_tokenizer_ss.py builds it:
    a BPE model over [PAD] [MASK] [UNK] a c g t (no merges) that lowercases its input."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=7, special_tokens=["[PAD]", "[MASK]", "[UNK]"],
                                  initial_alphabet=list("acgt"), show_progress=False)
    tokenizer.train_from_iterator(["acgt"], trainer=trainer, length=1)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", mask_token="[MASK]",
                            unk_token="[UNK]").save_pretrained(directory)
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"}))


def make_gpn(directory: Path, architecture: str = "convnet", seed: int = 0) -> Path:
    """A tiny random GPN masked LM of ``architecture``: gpn's legacy ConvNet (the layout of
    songlab/gpn-brassicacea), GPNForMaskedLM with its convolutional or its RoFormer encoder,
    or the legacy GPNRoFormer."""
    import torch
    from gpn.legacy import (ConvNetConfig, ConvNetForMaskedLM, GPNRoFormerConfig,
                            GPNRoFormerForMaskedLM)
    from gpn.model import GPNConfig, GPNForMaskedLM

    torch.manual_seed(seed)
    if architecture == "convnet":
        model = ConvNetForMaskedLM(ConvNetConfig(n_layers=3, hidden_size=32, kernel_size=5,
                                                 dilation_max=4))
    elif architecture == "gpn":
        model = GPNForMaskedLM(GPNConfig(num_hidden_layers=3, hidden_size=32,
                                         intermediate_size=64, first_kernel_size=7,
                                         rest_kernel_size=3))
    elif architecture == "gpn_roformer":
        model = GPNForMaskedLM(GPNConfig(
            encoder="roformer", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
            num_attention_heads=4, max_position_embeddings=ROFORMER_POSITIONS,
            attention_probs_dropout_prob=0.0))
    else:
        model = GPNRoFormerForMaskedLM(GPNRoFormerConfig(
            vocab_size=7, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
            num_attention_heads=4, max_position_embeddings=ROFORMER_POSITIONS,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    with torch.no_grad():  # away from the near-uniform initial predictions
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    write_gpn_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpn")
    return {a: make_gpn(root / a, a, seed=i) for i, a in enumerate(ARCHITECTURES)}


class Package:
    """gpn's own model and the checkpoint's own tokenizer, through transformers."""

    def __init__(self, directory: Path):
        import gpn
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        gpn.register_auto_classes("gpn")
        self.model = AutoModelForMaskedLM.from_pretrained(directory).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.acgt = self.tokenizer.convert_tokens_to_ids(list("acgt"))
        self._exact = {}

    def ids(self, seq: str):
        import torch

        ids = self.tokenizer(seq, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(seq)
        return torch.tensor([ids])

    def logits(self, ids):
        import torch

        with torch.no_grad():
            return self.model(input_ids=ids).logits[0]

    def logp(self, logits, base: str) -> float:
        return logits[self.acgt].double().log_softmax(-1)["ACGT".index(base)].item()

    def exact(self, seq: str) -> list[float]:
        """Per base: the base replaced by [MASK], the true base's log-probability among
        a c g t (every masked copy of ``seq`` in one batch: same length, no padding)."""
        import torch

        if seq in self._exact:
            return self._exact[seq]
        n = len(seq)
        ids = self.ids(seq).repeat(n, 1)
        ids[torch.arange(n), torch.arange(n)] = self.tokenizer.mask_token_id
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits
        self._exact[seq] = [self.logp(logits[i, i], base) for i, base in enumerate(seq)]
        return self._exact[seq]

    def unmasked(self, seq: str) -> list[float]:
        logits = self.logits(self.ids(seq))
        return [self.logp(logits[i], b) for i, b in enumerate(seq)]

    def last_hidden(self, seq: str):
        import torch

        with torch.no_grad():
            return self.model.model(input_ids=self.ids(seq)).last_hidden_state[0]


@pytest.fixture(scope="module")
def packages(checkpoints) -> dict[str, Package]:
    return {a: Package(d) for a, d in checkpoints.items()}


def ingest(tmp_path: Path, directory: Path, records: dict, name: str, **options):
    fasta = write_fasta(tmp_path / f"{name}.fa", records)
    options = {"workers": 0, "progress": False, "kind": "dna", "adapter": "gpn", **WINDOW,
               **options}
    seqatlas.ingest(fasta, atlas=tmp_path / name, model=str(directory), **options)
    return seqatlas.Atlas(tmp_path / name)


def by_window(rows):
    """Rows grouped by the window that owns them: {(seq_id, start, end): [rows]}."""
    groups = {}
    for r in rows:
        groups.setdefault((r["seq_id"], r["window_start"], r["window_end"]), []).append(r)
    return groups


@pytest.fixture(scope="module")
def exact_atlases(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    return {a: ingest(root, d, SEQS, a, likelihood="exact", strands="both")
            for a, d in checkpoints.items()}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_exact_logp_of_every_base_matches_the_package(architecture, exact_atlases, packages):
    rows = exact_atlases[architecture].positions().to_pylist()
    assert len(rows) == sum(map(len, SEQS.values()))
    groups = by_window(rows)
    assert len({k for k in groups if k[0] == "long"}) > 1  # windows cut the long one
    package = packages[architecture]
    for (seq_id, start, end), group in groups.items():
        window = SEQS[seq_id][start:end]
        want = package.exact(window)
        for r in group:
            assert r["ref"] == SEQS[seq_id][r["pos"]]
            assert r["logp"] == pytest.approx(want[r["pos"] - start], abs=1e-5), \
                (seq_id, r["pos"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_reverse_strand_matches_the_package_on_the_reverse_complement(
        architecture, exact_atlases, packages):
    package = packages[architecture]
    for (seq_id, start, end), group in by_window(
            exact_atlases[architecture].positions().to_pylist()).items():
        rc = reverse_complement(SEQS[seq_id][start:end].encode()).decode()
        want = package.exact(rc)
        for r in group:
            mirrored = end - 1 - r["pos"]
            assert r["logp_rc"] == pytest.approx(want[mirrored], abs=1e-5), (seq_id, r["pos"])
            assert r["logp_mean"] == pytest.approx((r["logp"] + r["logp_rc"]) / 2, abs=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unmasked_matches_one_package_pass(architecture, checkpoints, packages, tmp_path):
    atlas = ingest(tmp_path, checkpoints[architecture], SEQS, "u", likelihood="unmasked",
                   embeddings=False)
    package = packages[architecture]
    for (seq_id, start, end), group in by_window(atlas.positions().to_pylist()).items():
        want = package.unmasked(SEQS[seq_id][start:end])
        for r in group:
            assert r["logp_unmasked"] == pytest.approx(want[r["pos"] - start], abs=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_embeddings_are_the_package_final_hidden_states(architecture, checkpoints, packages,
                                                        tmp_path):
    import numpy as np
    import pyarrow.compute as pc

    records = {"b": SEQS["b"], "c": SEQS["c"]}  # one window each
    atlas = ingest(tmp_path, checkpoints[architecture], records, "e", likelihood="none")
    package = packages[architecture]
    for seq_id, seq in records.items():
        tokens = atlas.tokens().filter(pc.field("seq_id") == seq_id).sort_by("start").to_pylist()
        assert [t["token"] for t in tokens] == list(seq)
        got = np.array([t["embedding"] for t in tokens], dtype=np.float32)
        want = package.last_hidden(seq).numpy()
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=2e-3 * scale, rtol=2e-3)
    # DNA: 1 kb bins of the mean; GPN puts no token before the bases, so no bos
    pooled = atlas.pooled().to_pylist()
    assert atlas.manifest.pooling["poolings"] == ["mean"] and pooled
    for row in pooled:
        x = np.array([t["embedding"] for t in atlas.tokens().to_pylist()
                      if t["seq_id"] == row["seq_id"] and row["start"] <= t["start"] < row["end"]],
                     np.float32)
        np.testing.assert_allclose(np.asarray(row["vector"], np.float32), x.mean(0), rtol=1e-3,
                                   atol=1e-3)


def test_layers_are_the_package_modules_outputs(checkpoints, packages, tmp_path):
    """ConvNet: layer 0 is the one-hot input, layer L the output of the L-th conv block,
    the last the final states (the head's input)."""
    import numpy as np
    import torch

    seq = SEQS["c"]
    atlas = ingest(tmp_path, checkpoints["convnet"], {"c": seq}, "layers", likelihood="none",
                   layer=[0, 1, 3])
    tokens = atlas.tokens().sort_by("start").to_pylist()
    model = packages["convnet"].model.model
    with torch.no_grad():
        x0 = model.embedding(input_ids=packages["convnet"].ids(seq))
        x1 = model.encoder[0](x0)
        x3 = model.encoder[2](model.encoder[1](x1))
    for column, want in (("embedding", x0), ("embedding_layer_1", x1),
                         ("embedding_layer_3", x3)):
        got = np.array([t[column] for t in tokens], dtype=np.float32)
        want = want[0].numpy()
        np.testing.assert_allclose(got, want, atol=2e-3 * float(np.abs(want).max()),
                                   rtol=2e-3, err_msg=column)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_sequence_scores_the_same_alone_and_in_a_padded_batch(architecture, checkpoints,
                                                                 exact_atlases, tmp_path):
    alone = ingest(tmp_path, checkpoints[architecture], {"b": SEQS["b"]}, "alone",
                   likelihood="exact", strands="both")
    a = {r["pos"]: r for r in alone.positions().to_pylist()}
    batched = {r["pos"]: r for r in exact_atlases[architecture].positions().to_pylist()
               if r["seq_id"] == "b"}
    assert a.keys() == batched.keys()
    for pos, r in a.items():
        assert r["logp"] == pytest.approx(batched[pos]["logp"], abs=1e-5)
        assert r["logp_rc"] == pytest.approx(batched[pos]["logp_rc"], abs=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_encode_of_a_padded_batch_equals_each_row_alone(architecture, checkpoints):
    """GPN's models take no padding mask (padding changes the real tokens next to it), so
    the adapter runs each length unpadded."""
    import torch

    spec = resolve_model(str(checkpoints[architecture]), kind="dna")
    model = load_model(spec)
    tok = spec.tokenizer()
    seqs = [SEQS["b"], SEQS["c"][:17], SEQS["c"]]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), spec.specials.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.from_numpy(tok.tokenize(s.encode()).ids)
        mask[b, : len(s)] = 1
    with torch.inference_mode():
        last, hidden = model.encode(ids, mask, [0, 1, spec.num_layers])
        for b, s in enumerate(seqs):
            one, one_hidden = model.encode(ids[b : b + 1, : len(s)], mask[b : b + 1, : len(s)],
                                           [0, 1, spec.num_layers])
            torch.testing.assert_close(last[b, : len(s)], one[0], atol=1e-6, rtol=1e-6)
            for h, oh in zip(hidden, one_hidden):
                torch.testing.assert_close(h[b, : len(s)], oh[0], atol=1e-6, rtol=1e-6)
        assert hidden[2] is not None and torch.equal(hidden[2], last)


def test_spec_uppercases_the_vocabulary_and_has_no_cls_or_sep(checkpoints):
    for architecture, directory in checkpoints.items():
        spec = resolve_model(str(directory), kind="dna")  # no adapter named: detected
        assert spec.adapter == "gpn" and spec.family == "single" and spec.k == 1
        assert spec.vocab == {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "A": 3, "C": 4, "G": 5,
                              "T": 6}
        assert (spec.specials.prefix, spec.specials.suffix) == ((), ())
        assert (spec.specials.mask, spec.specials.pad, spec.specials.unk) == (1, 0, 2)
        roformer = architecture.endswith("roformer")
        assert spec.context_tokens == (ROFORMER_POSITIONS if roformer else 512)
        assert spec.num_layers == (2 if roformer else 3)
        assert spec.hidden_size == 32 and spec.parameters > 0
        assert spec.tokenizer().letters == "ACGT"
        # the tokenizer files stay lowercase: GPN's own tokenizer reads them
        assert json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]["a"] == 3


def test_long_sequences_use_the_roformer_context(checkpoints, tmp_path):
    seq = random_dna(130, 9)
    atlas = ingest(tmp_path, checkpoints["roformer"], {"s": seq}, "ctx", likelihood="none",
                   embeddings=True, window=None, overlap=None)
    widths = {r["window_end"] - r["window_start"] for r in atlas.positions().to_pylist()}
    assert max(widths) <= ROFORMER_POSITIONS


def test_detection_and_refusals(checkpoints, tmp_path):
    adapter = GpnAdapter()
    directory = checkpoints["convnet"]
    assert adapter.claims(directory)
    bert = make_bert(tmp_path / "bert")
    assert not adapter.claims(bert)
    assert not adapter.claims(tmp_path / "missing")
    assert not adapter.claims(directory / "config.json")  # a file
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_bytes(b"\xff\x00 not json")
    assert not adapter.claims(garbage)
    assert resolve_model(str(bert), kind="protein").adapter == "transformers"

    with pytest.raises(ModelError, match="DNA language model.*protein"):
        resolve_model(str(directory), kind="protein")
    with pytest.raises(ModelError, match="DNA language model.*protein"):
        resolve_model(str(directory), kind="protein", adapter="gpn")

    def variant(name: str, **changes) -> Path:
        copy = tmp_path / name
        shutil.copytree(directory, copy)
        config = json.loads((copy / "config.json").read_text())
        config.update(changes)
        (copy / "config.json").write_text(json.dumps(config))
        return copy

    with pytest.raises(ModelError, match="GPN-MSA"):
        resolve_model(str(variant("msa", n_aux_features=445)), kind="dna")
    with pytest.raises(ModelError, match="GPN-Star"):
        resolve_model(str(variant("star", model_type="GPNStar")), kind="dna")
    with pytest.raises(ModelError, match="no masked-LM head"):
        resolve_model(str(variant("cls", architectures=["ConvNetForSequenceClassification"])),
                      kind="dna")
    corrupt = variant("corrupt")
    (corrupt / "config.json").write_text('{"model_type": "ConvNet", "n_layers": ')
    with pytest.raises(ModelError, match=str(corrupt / "config.json")):
        resolve_model(str(corrupt), kind="dna", adapter="gpn")
    bad = variant("bad_config", model_type="GPNNoSuchThing")
    with pytest.raises(ModelError, match=str(bad / "config.json")):
        resolve_model(str(bad), kind="dna")


def test_missing_package_names_the_extra(monkeypatch, checkpoints):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gpn" else real(name, *a))
    adapter = GpnAdapter()
    with pytest.raises(ModelError, match=r"seqatlas\[gpn\]"):
        adapter.require()
    assert adapter.summary()["installed"] is False
    with pytest.raises(ModelError, match=r"seqatlas\[gpn\]"):
        resolve_model(str(checkpoints["convnet"]), kind="dna")


def test_importing_the_adapter_imports_no_model_package():
    code = ("import sys, seqatlas.checkpoints.gpn\n"
            "print([m for m in ('gpn', 'torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_ingest_detects_gpn_and_matches_the_api(checkpoints, exact_atlases, tmp_path):
    from typer.testing import CliRunner

    from seqatlas.cli.main import app

    fasta = write_fasta(tmp_path / "d.fa", SEQS)
    api = {(r["seq_id"], r["pos"]): r["logp"]
           for r in exact_atlases["convnet"].positions().to_pylist()}
    for name, extra in (("named", ["--adapter", "gpn"]), ("detected", [])):
        result = CliRunner().invoke(app, [
            "ingest", str(fasta), "--atlas", str(tmp_path / name), "--model",
            str(checkpoints["convnet"]), *extra, "--kind", "dna", "--window",
            str(WINDOW["window"]), "--overlap", str(WINDOW["overlap"]), "--workers", "0",
            "--progress", "none"])
        assert result.exit_code == 0, result.output
        atlas = seqatlas.Atlas(tmp_path / name)
        assert atlas.manifest["model"]["adapter"] == "gpn"
        cli = {(r["seq_id"], r["pos"]): r["logp"] for r in atlas.positions().to_pylist()}
        assert cli.keys() == api.keys()
        for k, value in api.items():
            assert cli[k] == pytest.approx(value, abs=1e-6)
            assert not math.isnan(value)
