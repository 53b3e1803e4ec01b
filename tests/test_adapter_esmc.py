"""The esmc adapter (EvolutionaryScale's ESM C).

EvolutionaryScale's ``esm`` and fair-esm install the same module ``esm``, and this environment
has fair-esm's; so the checks that run ESM C run in a child process (this file run as a
script) whose PYTHONPATH starts with the directories in ``$SEQATLAS_ESMC_SITE`` (os.pathsep
separated, holding EvolutionaryScale's esm and its import-time dependencies). Without it they
skip. The child builds a tiny random ESMC through the package's own classes, saves its
state dict as esm.pretrained's files are stored, ingests with it and compares every value with
the package's own forward pass; it writes one result per check, which the tests here read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ESMC_SITE = "SEQATLAS_ESMC_SITE"
REPO = Path(__file__).resolve().parents[1]
AMINO = "ACDEFGHIKLMNPQRSTVWY"
WINDOW, OVERLAP = 40, 10  # the 100-residue protein is cut into windows
BIG_BATCH = 1 << 16  # every row of an ingest in one padded forward pass


def _esmc_site() -> str | None:
    """``$SEQATLAS_ESMC_SITE`` when its directories hold esm.models.esmc."""
    dirs = [d for d in os.environ.get(ESMC_SITE, "").split(os.pathsep) if d]
    if any((Path(d) / "esm" / "models" / "esmc.py").is_file() for d in dirs):
        return os.pathsep.join(dirs)
    return None


# ---------------------------------------------------------------------------------------
# main environment: no ESM C needed


def _fake_state_dict(path: Path, *, d_model=128, layers=2) -> Path:
    """A file with ESM C's keys and shapes (zeros), saved as torch.save stores a state dict."""
    import torch

    state = {"embed.weight": torch.zeros(64, d_model)}
    for i in range(layers):
        state[f"transformer.blocks.{i}.attn.out_proj.weight"] = torch.zeros(d_model, d_model)
    state["transformer.norm.weight"] = torch.zeros(d_model)
    state["sequence_head.3.weight"] = torch.zeros(64, d_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_module_imports_without_the_package():
    from seqatlas.checkpoints.registry import get_adapter

    adapter = get_adapter("esmc")
    assert (adapter.name, adapter.extra, adapter.packages) == ("esmc", "esmc", ("esm",))


def test_claims_esmc_files_and_directories_only(tmp_path):
    import torch

    from seqatlas.checkpoints.esmc import EsmCAdapter

    adapter = EsmCAdapter()
    named = _fake_state_dict(tmp_path / "esmc_300m_2024_12_v0.pth")
    by_content = _fake_state_dict(tmp_path / "weights.pth")
    download = tmp_path / "download"
    _fake_state_dict(download / "data" / "weights" / "esmc_600m_2024_12_v0.pth")
    assert adapter.claims(named) and adapter.claims(by_content) and adapter.claims(download)
    # fair-esm (a dict with model and args) and ESM3 (other top-level keys) are not ESM C
    torch.save({"model": {"encoder.layers.0.weight": torch.zeros(2)}, "args": {}},
               tmp_path / "esm2_t6_8M_UR50D.pt")
    torch.save({"encoder.sequence_embed.weight": torch.zeros(2),
                "transformer.norm.weight": torch.zeros(2),
                "output_heads.sequence_head.3.weight": torch.zeros(2)}, tmp_path / "esm3.pth")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in ("esm2_t6_8M_UR50D.pt", "esm3.pth", "garbage.pt", "empty", "absent.pth"):
        assert not adapter.claims(tmp_path / path), path


def test_refuses_dna_and_a_corrupt_file_before_needing_the_package(tmp_path):
    from seqatlas.checkpoints.adapter import ModelRequest
    from seqatlas.checkpoints.esmc import EsmCAdapter
    from seqatlas.errors import ModelError

    adapter = EsmCAdapter()
    good = _fake_state_dict(tmp_path / "esmc_300m_2024_12_v0.pth")
    with pytest.raises(ModelError, match="protein model"):
        adapter.resolve(ModelRequest(name="m", path=good, source="file", kind="dna"))
    bad = tmp_path / "esmc_bad.pth"
    bad.write_bytes(b"\x00corrupt" * 10)
    with pytest.raises(ModelError, match=str(bad)):
        adapter.resolve(ModelRequest(name="m", path=bad, source="file", kind="protein"))
    twice = tmp_path / "twice"
    for name in ("esmc_300m_2024_12_v0.pth", "esmc_600m_2024_12_v0.pth"):
        _fake_state_dict(twice / "data" / "weights" / name)
    with pytest.raises(ModelError, match="several ESM C weight files"):
        adapter.resolve(ModelRequest(name="m", path=twice, source="directory", kind="protein"))


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    from seqatlas.checkpoints.esmc import EsmCAdapter
    from seqatlas.errors import ModelError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "esm" else real(name, *a))
    adapter = EsmCAdapter()
    assert adapter.missing() == ["esm"] and not adapter.summary()["installed"]
    with pytest.raises(ModelError, match=r"seqatlas\[esmc\]"):
        adapter.require()


def test_fair_esm_in_place_of_esm_is_named(monkeypatch):
    from seqatlas.checkpoints import esmc
    from seqatlas.errors import ModelError

    monkeypatch.setattr(esmc, "esmc_importable", lambda: False)
    monkeypatch.setattr(esmc, "_other_esm", lambda: "fair-esm's")
    real = esmc.importlib.util.find_spec
    monkeypatch.setattr(esmc.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "esm" else real(name, *a))
    with pytest.raises(ModelError) as error:
        esmc.EsmCAdapter().require()
    message = str(error.value)
    assert "fair-esm" in message and "seqatlas[esmc]" in message
    assert "cannot share one environment" in message


def test_the_installed_fair_esm_is_recognised():
    from importlib import metadata

    from seqatlas.checkpoints import esmc
    from seqatlas.errors import ModelError

    try:
        metadata.distribution("fair-esm")
    except metadata.PackageNotFoundError:
        pytest.skip("fair-esm is not installed here")
    if esmc.esmc_importable():
        pytest.skip("EvolutionaryScale's esm is importable here")
    with pytest.raises(ModelError, match="fair-esm's"):
        esmc.EsmCAdapter().require()


# ---------------------------------------------------------------------------------------
# ESM C itself: in the child process


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    site = _esmc_site()
    if site is None:
        pytest.skip(f"EvolutionaryScale's esm is not installed beside fair-esm: set {ESMC_SITE} "
                    "to the directories that hold it and its dependencies (os.pathsep "
                    "separated, e.g. pip install --no-deps --target DIR esm==3.2.1.post1)")
    out = tmp_path_factory.mktemp("esmc_child")
    path = [site, str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def _passed(child, check):
    result = child[check]
    assert result["ok"], result["detail"]
    return result


def test_exact_logp_equals_the_packages_own_masked_forward(child):
    detail = _passed(child, "exact")["detail"]
    assert detail["positions"] == 180 and detail["windows_of_long"] >= 3


def test_unmasked_logp_equals_one_package_forward(child):
    _passed(child, "unmasked")


def test_embeddings_equal_the_representation_the_head_reads(child):
    _passed(child, "embeddings")


def test_layers_0_1_and_final(child):
    _passed(child, "layers")


def test_scores_do_not_depend_on_the_batch(child):
    _passed(child, "batch")


def test_detection_and_spec(child):
    _passed(child, "detection")


def test_refusals_through_resolve_model(child):
    _passed(child, "refusals")


def test_cli_ingest_with_the_adapter(child):
    _passed(child, "cli")


# ---------------------------------------------------------------------------------------
# the child process (EvolutionaryScale's esm importable)


def _proteins():
    import random

    rng = random.Random(5)
    return {name: "".join(rng.choice(AMINO) for _ in range(n))
            for name, n in (("long", 100), ("short", 23), ("mid", 57))}


def _write_fasta(path: Path, records: dict) -> Path:
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    return path


class _Package:
    """The tiny model through the esm package's own API: its tokenizer and its forward."""

    def __init__(self, out: Path):
        import torch
        from esm.models.esmc import ESMC
        from esm.tokenization import get_esmc_model_tokenizers

        torch.manual_seed(0)
        self.tokenizer = get_esmc_model_tokenizers()
        self.model = ESMC(d_model=128, n_heads=2, n_layers=2, tokenizer=self.tokenizer,
                          use_flash_attn=False).eval()
        self.directory = out / "esmc_download"
        self.file = self.directory / "data" / "weights" / "esmc_tiny_2024_12_v0.pth"
        self.file.parent.mkdir(parents=True)
        torch.save(self.model.state_dict(), self.file)  # as esm.pretrained reads it
        self.aa = [self.tokenizer.convert_tokens_to_ids(a) for a in AMINO]

    def ids(self, residues: str):
        from esm.utils import encoding

        return encoding.tokenize_sequence(residues, self.tokenizer, add_special_tokens=True)

    def forward(self, ids):
        import torch

        with torch.no_grad():
            return self.model(sequence_tokens=ids)

    def masked_logp(self, residues: str):
        """Per residue: log p(true letter) over the 20 amino acids with it masked, and the
        entropy of that distribution (one row per residue, the package's <mask>)."""
        import torch

        ids = self.ids(residues)
        batch = ids.repeat(len(residues), 1)
        index = torch.arange(len(residues))
        batch[index, index + 1] = self.tokenizer.mask_token_id
        logits = self.forward(batch).sequence_logits[index, index + 1][:, self.aa]
        logp = torch.log_softmax(logits.double(), dim=-1)
        truth = torch.tensor([AMINO.index(a) for a in residues])
        return logp[index, truth].numpy(), -(logp.exp() * logp).sum(-1).numpy()

    def unmasked_logp(self, residues: str):
        import torch

        logits = self.forward(self.ids(residues)[None]).sequence_logits[0, 1:-1][:, self.aa]
        logp = torch.log_softmax(logits.double(), dim=-1)
        truth = torch.tensor([AMINO.index(a) for a in residues])
        return logp[torch.arange(len(residues)), truth].numpy()


def _ingest(out: Path, name: str, records: dict, package: _Package, **options):
    import seqatlas

    fasta = _write_fasta(out / f"{name}.fa", records)
    options = {"likelihood": "exact", "window": WINDOW, "overlap": OVERLAP,
               "batch_tokens": BIG_BATCH, "workers": 0, "progress": False, **options}
    seqatlas.ingest(fasta, atlas=out / name, model=str(package.file), adapter="esmc",
                    **options)
    return seqatlas.Atlas(out / name)


def _rows(atlas):
    return atlas.positions().to_pylist()


def _check_exact(out, package, records):
    import numpy as np

    atlas = _ingest(out, "exact", records, package)
    rows = _rows(atlas)
    cache = {}
    worst = worst_entropy = 0.0
    for row in rows:
        key = (row["seq_id"], row["window_start"], row["window_end"])
        if key not in cache:
            cache[key] = package.masked_logp(records[key[0]][key[1] : key[2]])
        logp, entropy = cache[key]
        local = row["pos"] - row["window_start"]
        worst = max(worst, abs(row["logp"] - logp[local]))
        worst_entropy = max(worst_entropy, abs(row["entropy"] - entropy[local]))
    assert worst < 1e-5, f"max |logp - brute force| = {worst}"
    assert worst_entropy < 1e-4, f"max |entropy - brute force| = {worst_entropy}"
    assert float(np.std([r["logp"] for r in rows])) > 0.05  # the model is not uniform
    return {"positions": len(rows), "max_error": worst,
            "windows_of_long": len({k for k in cache if k[0] == "long"})}


def _check_unmasked(out, package, records):
    rows = _rows(_ingest(out, "unmasked", records, package, likelihood="unmasked"))
    cache = {}
    worst = 0.0
    for row in rows:
        key = (row["seq_id"], row["window_start"], row["window_end"])
        if key not in cache:
            cache[key] = package.unmasked_logp(records[key[0]][key[1] : key[2]])
        worst = max(worst, abs(row["logp_unmasked"] - cache[key][row["pos"] - key[1]]))
    assert len(rows) == 180 and worst < 1e-5, f"max error {worst}"
    return {"max_error": worst}


def _close(got, expected) -> float:
    """The largest error of float16 ``got`` beyond float16 tolerance (0: within)."""
    import numpy as np

    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    excess = np.abs(got - expected) - (2e-3 + 1e-3 * np.abs(expected))
    return float(max(excess.max(), 0.0))


def _check_embeddings(out, package, records):
    atlas = seqatlas_atlas(out / "exact")
    windows = {(r["seq_id"], r["pos"]): (r["window_start"], r["window_end"])
               for r in _rows(atlas)}
    tokens = atlas.tokens(columns=["seq_id", "start", "embedding"]).to_pylist()
    cache = {}
    worst = 0.0
    for token in tokens:
        start, end = windows[token["seq_id"], token["start"]]
        key = (token["seq_id"], start, end)
        if key not in cache:
            output = package.forward(package.ids(records[key[0]][start:end])[None])
            # the final representation: after the final norm, what sequence_head reads
            assert (package.model.sequence_head(output.embeddings) - output.sequence_logits
                    ).abs().max() == 0
            cache[key] = output.embeddings[0].numpy()
        worst = max(worst, _close(token["embedding"], cache[key][token["start"] - start + 1]))
    assert len(tokens) == 180 and worst == 0, f"beyond float16 tolerance by {worst}"
    return {"tokens": len(tokens)}


def _check_layers(out, package, records):
    short = {k: records[k] for k in ("short", "mid")}  # one window each
    atlas = _ingest(out, "layers", short, package, likelihood="none", layer=[0, 1, 2],
                    window=None, overlap=None)
    tokens = atlas.tokens().to_pylist()
    expected = {}
    for name, residues in short.items():
        ids = package.ids(residues)[None]
        output = package.forward(ids)
        expected[name] = {"embedding": package.model.embed(ids)[0].detach().numpy(),
                          "embedding_layer_1": output.hidden_states[0][0].numpy(),
                          "embedding_layer_2": output.embeddings[0].numpy()}
    worst = 0.0
    for token in tokens:
        for column, values in expected[token["seq_id"]].items():
            worst = max(worst, _close(token[column], values[token["start"] + 1]))
    assert len(tokens) == 80 and worst == 0, f"beyond float16 tolerance by {worst}"
    return {"tokens": len(tokens)}


def _check_batch(out, package, records):
    # the shortest protein: inside the batch its rows are padded to the longest (59 tokens)
    alone = _rows(_ingest(out, "alone", {"short": records["short"]}, package,
                          batch_tokens=None))
    batched = [r for r in _rows(_ingest(out, "batched", records, package))
               if r["seq_id"] == "short"]
    worst = max(abs(a["logp"] - b["logp"]) for a, b in zip(alone, batched, strict=True))
    assert len(alone) == 23 and worst < 1e-5, f"max |alone - batched| = {worst}"
    return {"max_error": worst}


def _check_detection(out, package, records):
    import shutil

    from seqatlas.checkpoints import resolve_model

    renamed = out / "weights.pth"
    shutil.copy(package.file, renamed)
    parameters = sum(p.numel() for p in package.model.parameters())
    for path in (package.file, package.directory, renamed):
        spec = resolve_model(str(path), kind="protein")
        assert spec.adapter == "esmc", (path, spec.adapter)
        assert (spec.model_type, spec.family, spec.hidden_size, spec.num_layers) == \
            ("esmc", "single", 128, 2)
        assert spec.options == {"d_model": 128, "n_heads": 2, "n_layers": 2}
        assert spec.parameters == parameters and spec.context_tokens == 2048
        tokenizer = package.tokenizer
        assert spec.specials.prefix == (tokenizer.cls_token_id,) == (0,)
        assert spec.specials.suffix == (tokenizer.eos_token_id,) == (2,)
        assert (spec.specials.mask, spec.specials.pad, spec.specials.unk) == (32, 1, 3)
        assert spec.vocab == tokenizer.get_vocab()
    return {"parameters": parameters}


def _check_refusals(out, package, records):
    from seqatlas.checkpoints import resolve_model
    from seqatlas.errors import ModelError

    try:
        resolve_model(str(package.file), kind="dna")
    except ModelError as exc:
        assert "protein model" in str(exc), str(exc)
    else:
        raise AssertionError("a DNA request was not refused")
    bad = out / "esmc_corrupt.pth"
    bad.write_bytes(package.file.read_bytes()[:500])
    try:
        resolve_model(str(bad), kind="protein")
    except ModelError as exc:
        assert str(bad) in str(exc), str(exc)
    else:
        raise AssertionError("a corrupt file was not refused")
    return {}


def _check_cli(out, package, records):
    from typer.testing import CliRunner

    from seqatlas.cli.main import app

    fasta = _write_fasta(out / "cli.fa", records)
    result = CliRunner().invoke(app, [
        "ingest", str(fasta), "--atlas", str(out / "cli"), "--model", str(package.file),
        "--adapter", "esmc", "--likelihood", "exact", "--window", str(WINDOW),
        "--overlap", str(OVERLAP), "--batch-tokens", str(BIG_BATCH), "--workers", "0",
        "--progress", "none"])
    assert result.exit_code == 0, result.output
    api = {(r["seq_id"], r["pos"]): r["logp"] for r in _rows(seqatlas_atlas(out / "exact"))}
    cli = {(r["seq_id"], r["pos"]): r["logp"] for r in _rows(seqatlas_atlas(out / "cli"))}
    assert cli.keys() == api.keys()
    worst = max(abs(cli[k] - api[k]) for k in api)
    assert worst < 1e-6, f"max |cli - api| = {worst}"
    return {}


def seqatlas_atlas(path):
    import seqatlas

    return seqatlas.Atlas(path)


CHECKS = {"exact": _check_exact, "unmasked": _check_unmasked, "embeddings": _check_embeddings,
          "layers": _check_layers, "batch": _check_batch, "detection": _check_detection,
          "refusals": _check_refusals, "cli": _check_cli}


def _child_main(out: Path) -> None:
    package = _Package(out)
    records = _proteins()
    results = {}
    for name, check in CHECKS.items():
        try:
            detail = check(out, package, records)
            results[name] = {"ok": True, "detail": detail}
        except Exception:
            results[name] = {"ok": False, "detail": traceback.format_exc()}
    (out / "results.json").write_text(json.dumps(results, default=float))


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
