"""Credentials are never written down: with canary AWS credentials in the environment, a run
against the local S3 endpoint (ingest, info, log, query, export, report, verify, index, and
failing commands) leaves none of them in the bucket, the local files, the cache or anything
printed; a URI with credentials in it is refused, with a message that names the environment
and not the secret, before anything is written."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import AtlasError
from seqatlas.locations import redacted, remote_location, scrubbed
from tests.conftest import random_protein, write_fasta

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("moto.server", reason="the S3 tests need moto's server (the test extra)")

KEY = "AKIACANARY7Q3XK2M4PZ"
SECRET = "canary-secret-Zq8/Wv3+Lm0pR7sT2uY5nB4xC6dE9fG1"
TOKEN = "canary-token-FwoGZXIvYXdzEJr+/hK7NzQ3MDExNTc4OTAxMjM0NTY3ODkw"
CANARIES = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_SESSION_TOKEN": TOKEN}


def _needles() -> dict[bytes, str]:
    """Each canary as written, URL-encoded and base64-encoded (at the three alignments)."""
    needles = {}
    for variable, value in CANARIES.items():
        raw = value.encode()
        needles[raw] = variable
        needles.setdefault(quote(value, safe="").encode(), f"{variable} (URL-encoded)")
        for shift in range(3):
            needles[base64.b64encode(b"\0" * shift + raw)[4:-4]] = f"{variable} (base64)"
    return needles


NEEDLES = _needles()


def leaks(named: dict[str, bytes]) -> list[str]:
    """``where: which canary`` for every canary found in ``named`` bytes."""
    return [f"{where}: {what}" for where, data in named.items()
            for needle, what in NEEDLES.items() if needle in data]


def bucket_objects(endpoint, bucket: str) -> dict[str, bytes]:
    """Every object of ``bucket``: its key, user metadata and bytes."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    objects = {}
    for key in endpoint.keys(bucket):
        body = client.get_object(Bucket=bucket, Key=key)
        objects[f"s3://{bucket}/{key}"] = (key.encode() + repr(body["Metadata"]).encode()
                                           + body["Body"].read())
    return objects


def local_files(*roots: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for root in roots for path in root.rglob("*")
            if path.is_file()}


@pytest.fixture(scope="module")
def s3():
    from tests.s3_endpoint import local_s3_endpoint

    with local_s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def canaries(s3, monkeypatch):
    """The endpoint, with the canary credentials in this process's environment (and so in
    every subprocess's): moto takes any."""
    for variable, value in CANARIES.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("SEQATLAS_PROGRESS_INTERVAL", "0.01")  # progress lines are scanned too
    return s3


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqatlas.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)


def test_the_scanner_finds_a_canary_in_each_place_it_scans(tmp_path, canaries):
    uri = canaries.bucket("control")
    assert not leaks({"clean": b"nothing here"})
    location = remote_location(f"{uri}/atlas")
    location.write_bytes(f"key {KEY}".encode(), "planted.txt")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "planted.json").write_bytes(base64.b64encode(b"x" + SECRET.encode()))
    found = leaks({**bucket_objects(canaries, "control"), **local_files(tmp_path),
                   "stderr": f"token={quote(TOKEN, safe='')}".encode()})
    assert found == [f"{uri}/atlas/planted.txt: AWS_ACCESS_KEY_ID",
                     f"{tmp_path}/deep/planted.json: AWS_SECRET_ACCESS_KEY (base64)",
                     "stderr: AWS_SESSION_TOKEN (URL-encoded)"]


def test_a_whole_run_on_s3_writes_and_prints_no_credential(tmp_path, tiny_esm, canaries,
                                                            capfd):
    uri = canaries.bucket("canary") + "/atlas"
    fasta = write_fasta(tmp_path / "in.fa", {f"p{i}": random_protein(30 + 9 * i, seed=i)
                                             for i in range(3)})
    signing = pickle.dumps(remote_location(uri).filesystem)  # what pyarrow signs requests with
    assert KEY.encode() in signing and SECRET.encode() in signing and TOKEN.encode() in signing
    out = tmp_path / "out"
    out.mkdir()
    printed = {}
    ingest = _cli(["ingest", str(fasta), "--atlas", uri, "--model", str(tiny_esm),
                   "--workers", "0", "--unit-tokens", "400", "--progress", "log"], cwd=out)
    assert ingest.returncode == 0, ingest.stderr
    printed["ingest"] = ingest.stdout + ingest.stderr
    missing = _cli(["info", canaries.bucket("canary") + "/no-atlas-here"], cwd=out)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ")
    printed["info of a missing atlas"] = missing.stdout + missing.stderr

    commands = {
        "info": (["info", uri, "--json"], 0),
        "log": (["log", "--atlas", uri], 0),
        "sql": (["query", "sql", "--atlas", uri, "SELECT count(*) AS n FROM positions",
                 "--format", "json"], 0),
        "anomalies": (["query", "anomalies", "--atlas", uri, "--z", "1",
                       "-o", str(out / "anomalies.tsv")], 0),
        "bed": (["export", "bed", "--atlas", uri, "--z", "1", "-o", str(out / "a.bed")], 0),
        "bedgraph": (["export", "bedgraph", "--atlas", uri, "-o", str(out / "a.bedgraph")], 0),
        "report": (["report", "--atlas", uri, "-o", str(out / "report.html")], 0),
        "verify": (["verify", "--atlas", uri], 0),
        "index": (["index", "build", "--atlas", uri, "--type", "flat"], 0),
        "bad sql": (["query", "sql", "--atlas", uri, "SELECT nope FROM positions"], 1),
        "writing sql": (["query", "sql", "--atlas", uri, "DROP TABLE positions"], 1),
    }
    for name, (argv, code) in commands.items():
        assert main(argv) == code, name
        captured = capfd.readouterr()
        printed[name] = captured.out + captured.err
    assert '"n": ' in printed["sql"] and printed["bad sql"].startswith("Error: ")
    assert "<html" in (out / "report.html").read_text()[:300].lower()
    assert (out / "a.bedgraph").stat().st_size > 0

    scanned = {**bucket_objects(canaries, "canary"),
               **local_files(tmp_path, Path(os.environ["SEQATLAS_CACHE_DIR"])),
               **{f"output of {name}": text.encode() for name, text in printed.items()}}
    assert any(key.endswith("/atlas.json") for key in scanned)
    assert any(key.endswith(".parquet") for key in scanned)
    assert leaks(scanned) == []


URIS = [
    f"s3://{KEY}:{SECRET}@refused/atlas",
    f"s3://{KEY}@refused/atlas",
    f"s3://{quote(KEY, safe='')}%3A{quote(SECRET, safe='')}%40refused/atlas",
    f"s3://refused/atlas?endpoint_override={KEY}:{SECRET}@127.0.0.1:9&scheme=http",
    f"s3://refused/atlas?endpoint_override={quote(f'http://{KEY}:{SECRET}@127.0.0.1:9')}",
    f"s3://refused/atlas?secret_key={quote(SECRET, safe='')}",
    f"gs://{KEY}:{SECRET}@refused/atlas",
    f"memory://{KEY}:{SECRET}@refused/atlas",
    f"abfss://refused:{quote(SECRET, safe='')}@account.dfs.core.windows.net/atlas",
]


@pytest.mark.parametrize("uri", URIS, ids=["s3", "s3-user-only", "s3-percent-encoded",
                                           "endpoint-override", "endpoint-override-http",
                                           "query-secret", "gs", "memory", "abfss"])
def test_a_uri_with_credentials_is_refused_without_showing_them(uri, tmp_path, canaries,
                                                                capfd):
    canaries.bucket("refused")
    fasta = write_fasta(tmp_path / "in.fa", {"p": "MKTAYIAKQR"})
    for argv in (["info", uri], ["ingest", str(fasta), "--atlas", uri, "--no-progress"],
                 ["log", "--atlas", uri], ["verify", "--atlas", uri],
                 ["query", "sql", "--atlas", uri, "SELECT 1"],
                 ["export", "bed", "--atlas", uri, "-o", str(tmp_path / "a.bed")],
                 ["index", "build", "--atlas", uri],
                 ["report", "--atlas", uri, "-o", str(tmp_path / "r.html")]):
        assert main(argv) == 1, argv
        captured = capfd.readouterr()
        assert captured.out == "" and captured.err.startswith("Error: "), captured.err
        assert "environment" in captured.err and "***" in captured.err
        assert leaks({"output": captured.err.encode()}) == []
    with pytest.raises(AtlasError, match="AWS_SECRET_ACCESS_KEY") as refused:
        seqatlas.info(uri)
    assert leaks({"message": str(refused.value).encode()}) == []
    assert canaries.keys("refused") == []
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "a.bed").exists()


def test_the_cli_entry_point_refuses_one_with_exit_1(tmp_path, canaries):
    canaries.bucket("refused")
    done = _cli(["ingest", "in.fa", "--atlas", URIS[0]], cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("Error: s3://***@refused/atlas carries user info")
    assert "AWS_ACCESS_KEY_ID" in done.stderr and leaks({"stderr": done.stderr.encode()}) == []
    assert canaries.keys("refused") == []


def test_an_endpoint_variable_with_user_info_is_refused(canaries, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", canaries.url.replace("//", f"//{KEY}:{SECRET}@"))
    with pytest.raises(AtlasError, match="AWS_ENDPOINT_URL carries user info") as refused:
        seqatlas.info("s3://refused/atlas")
    assert leaks({"message": str(refused.value).encode()}) == []


@pytest.mark.parametrize(("uri", "shown"), [
    ("s3://bucket/a@b/atlas?region=us-east-1", "s3://bucket/a@b/atlas?region=us-east-1"),
    ("abfs://container@account.dfs.core.windows.net/a",
     "abfs://container@account.dfs.core.windows.net/a"),
    ("s3://k:s/e+c@bucket/atlas", "s3://***@bucket/atlas"),
    ("s3://b/a?endpoint_override=http://k:s@h:9&scheme=http",
     "s3://b/a?endpoint_override=http://***@h:9&scheme=http"),
    ("gs://b/a?access_token=abc&project_id=p", "gs://b/a?access_token=***&project_id=p"),
])
def test_redacted_hides_only_credentials(uri, shown):
    assert redacted(uri) == shown


def test_a_storage_librarys_message_is_scrubbed_of_the_environments_credentials(canaries):
    text = f"AWS Error: key {KEY}, secret {SECRET}, token {TOKEN}; check the endpoint"
    assert scrubbed(text) == "AWS Error: key ***, secret ***, token ***; check the endpoint"


@pytest.mark.parametrize("address", ["ray://admin:hunter2@head:10001",
                                     "admin:hunter2@10.0.0.1:6379"])
def test_a_ray_address_with_user_info_is_refused_without_showing_it(address):
    from seqatlas.errors import ConfigError
    from seqatlas.util import start_ray

    with pytest.raises(ConfigError) as caught:
        start_ray(address, error=ConfigError, fallback="use --workers 0")
    assert "hunter2" not in str(caught.value) and "environment" in str(caught.value)
