"""HTTPS: ``collabvit serve --ssl-certfile/--ssl-keyfile`` and ``collabvit edge --ca-file``.

The test makes its own CA and a server certificate for 127.0.0.1, starts one
real uvicorn server process with them, and runs the edge command against it:
with the CA every image is answered by the server; without it (the system
CAs) the certificate is refused and the edge answers them itself; a plain
``http://`` request to the TLS port gets no answer. Bad TLS options are one
line before any model loads.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_process import cli_command, cli_env, free_port

from collabvit import cli
from collabvit.commands import edge as edge_command

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

START_TIMEOUT_S = 240


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, server key), PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("collabvit test CA"))
        .issuer_name(_name("collabvit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TlsServer:
    def __init__(self, url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.ca, self.proc, self.log = url, ca, proc, log


@pytest.fixture(scope="module")
def tls_server(
    small_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(folder)
    port = free_port()
    command = cli_command(
        "serve", "--server", str(small_pair[1]), "--host", "127.0.0.1", "--port", str(port),
        "--threads", "1", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
    )  # fmt: skip
    log = folder / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=cli_env())
    server = TlsServer(f"https://127.0.0.1:{port}", ca, proc, log)
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{server.url}/readyz", verify=context, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def edge_args(small_pair: tuple[Path, Path], photo_dir: Path, out: Path, *more: str) -> object:
    parser, _ = cli._build_parser()
    return parser.parse_args(
        [
            "edge", "--edge", str(small_pair[0]), str(photo_dir), "--labels",
            str(photo_dir / "labels.csv"), "--measure", "none", "--limit", "4",
            "--retries", "0", "--threads", "1", "--out", str(out), *more,
        ]
    )  # fmt: skip


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLLABVIT_TOKEN", raising=False)


def test_the_edge_with_the_ca_file_is_answered_over_https(
    tls_server: TlsServer, small_pair: tuple[Path, Path], photo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "https.jsonl"
    args = edge_args(
        small_pair, photo_dir, out, "--server-url", tls_server.url, "--ca-file", str(tls_server.ca)
    )
    assert edge_command.execute(args) == 0  # type: ignore[arg-type]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["source"] for line in lines] == ["server"] * 4


def test_without_the_ca_the_certificate_is_refused_and_the_edge_answers(
    tls_server: TlsServer,
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "untrusted.jsonl"
    args = edge_args(small_pair, photo_dir, out, "--server-url", tls_server.url)
    assert edge_command.execute(args) == 1  # type: ignore[arg-type]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["source"] for line in lines] == ["edge-fallback"] * 4
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]["error"] or "certificate" in lines[0]["error"]
    assert "answered none of the 4 images" in capsys.readouterr().err
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_server.url.replace("https://", "http://") + "/healthz", timeout=5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--ssl-keyfile", "k.pem"), "HTTPS needs both --ssl-certfile and --ssl-keyfile"),
        (("--ssl-certfile", "nope.pem", "--ssl-keyfile", "k.pem"), "nope.pem does not exist"),
    ],
)
def test_bad_tls_options_are_one_line(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--server", "x", *argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("collabvit serve: error: ") and message in line


def test_a_certificate_that_is_not_pem_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert cli.main(["serve", "--server", "x", "--ssl-certfile", str(junk),
                     "--ssl-keyfile", str(junk)]) == 2  # fmt: skip
    (line,) = capsys.readouterr().err.splitlines()
    assert "are not a PEM certificate and its key" in line


def test_the_edge_refuses_a_ca_file_for_http_and_a_missing_one(
    small_pair: tuple[Path, Path], photo_dir: Path, tmp_path: Path
) -> None:
    from collabvit.errors import ConfigError

    out = tmp_path / "x.jsonl"
    for url, ca, words in (
        ("http://127.0.0.1:1", str(small_pair[0]), "needs an https:// server URL"),
        ("https://127.0.0.1:1", str(tmp_path / "missing.pem"), "does not exist"),
    ):
        args = edge_args(small_pair, photo_dir, out, "--server-url", url, "--ca-file", ca)
        with pytest.raises(ConfigError, match=words):
            edge_command.execute(args)  # type: ignore[arg-type]
    assert not out.exists()
