"""Listening beyond loopback needs TLS, and TLS means verified client certificates."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.webhook.conftest import ROOT, Server

EXE = Path(sys.executable).with_name("gpu-extender")
CLUSTER = ROOT / "examples" / "cluster.yaml"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed; a rogue one."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.crt",
            "-days", "1", "-subj", "/CN=rogue", cwd=d)
    return d


def context(pki: Path, identity: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if identity:
        ctx.load_cert_chain(str(pki / f"{identity}.crt"), str(pki / f"{identity}.key"))
    return ctx


def test_non_loopback_address_without_tls_is_refused():
    done = subprocess.run([str(EXE), "serve", "--cluster", str(CLUSTER), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--client-ca" in done.stderr


def test_tls_requires_a_client_certificate_from_the_ca(pki: Path, tmp_path: Path):
    server = Server(CLUSTER, tmp_path / "serve.log", "--tls-cert", str(pki / "server.crt"),
                    "--tls-key", str(pki / "server.key"), "--client-ca", str(pki / "ca.crt"),
                    tls=context(pki, "client"))
    try:
        assert server.client.get("/healthz").status_code == 200
        for identity in (None, "rogue"):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{server.url}/healthz", verify=context(pki, identity))
        assert server.post("filter", b"{").json()["Error"]  # served over TLS like any other verb
    finally:
        server.stop()
