"""``meshgate certs`` and the identities its certificates carry."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshgate.config import EXAMPLES_DIR, QUICKSTART_PATH, load_config
from meshgate.tls import CLIENT_URI_PREFIX, TlsError, TlsFiles, make_ca, make_region_cert, peer_identity, regions_named


def certs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate", "certs", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sans(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    return san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(x509.DNSName) + ips


def test_certs_for_the_quickstart_mtls_file_make_it_load(tmp_path: Path) -> None:
    example = EXAMPLES_DIR / "quickstart-mtls.yaml"
    done = certs("--out", "certs", "-c", str(example), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "certs"
    names = {"ca", "us-west", "eu-central", "ap-south", "client"}
    assert {p.name for p in out.iterdir()} == {f"{n}.{ext}" for n in names for ext in ("crt", "key")}
    for n in names:
        assert stat.S_IMODE((out / f"{n}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((out / f"{n}.crt").stat().st_mode) == 0o644
    uris, names_ = sans(out / "eu-central.crt")
    assert uris == ["meshgate://region/eu-central"]
    assert {"eu-central", "localhost", "127.0.0.1"} <= set(names_)
    assert sans(out / "client.crt")[0] == [f"{CLIENT_URI_PREFIX}client"]
    # It prints the lines to paste and the CLI options.
    assert f"ca: {out}/ca.crt" in done.stdout
    assert f"tls: {{cert: {out}/us-west.crt, key: {out}/us-west.key}}" in done.stdout
    assert f"--cert-key {out}/client.key" in done.stdout
    # The example loads with them, the files checked (CA signature, region names, key pairs).
    config = load_config(example, env={"MESHGATE_CERTS": str(out)})
    assert config.security.ca == out / "ca.crt"


def _header_commands(example: Path) -> list[list[str]]:
    """The ``meshgate ...`` commands the example's header comment tells a reader to run, as argv."""
    texts: list[str] = []
    continued = False
    for line in example.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.removeprefix("#").strip()
        if continued:
            texts[-1] += " " + text.removesuffix("\\")
        elif text.startswith("meshgate "):
            texts.append(text.removesuffix("\\"))
        continued = text.endswith("\\") and bool(texts)
    return [shlex.split(text) for text in texts]


def test_the_mtls_example_validates_as_its_comment_says(tmp_path: Path) -> None:
    """From a clone's root, with no variable set: `meshgate certs` as the file's comment says, then
    `meshgate config validate` as it says, passes (it looked for the certificates beside itself)."""
    example = EXAMPLES_DIR / "quickstart-mtls.yaml"
    # A clone's layout: the example under config/examples/, the commands run from the root.
    (tmp_path / "config" / "examples").mkdir(parents=True)
    shutil.copy(example, tmp_path / "config" / "examples" / example.name)
    commands = {argv[1]: argv for argv in _header_commands(example)}
    assert "certs" in commands, commands
    validate = ["meshgate", "config", "validate", "config/examples/quickstart-mtls.yaml"]
    assert commands.get("config", validate) == validate
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    for argv in (commands["certs"], validate):
        done = subprocess.run(
            [sys.executable, "-m", *argv],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
    # The gateways load it as `up` will, the files checked.
    config = load_config(tmp_path / validate[-1], env=env)
    assert config.security.ca == (tmp_path / "certs" / "ca.crt").resolve()


def test_the_ca_is_kept_so_a_region_can_be_made_again(tmp_path: Path) -> None:
    assert certs("--region", "a", "--region", "b", cwd=tmp_path).returncode == 0
    ca = (tmp_path / "certs" / "ca.crt").read_bytes()
    old_a = (tmp_path / "certs" / "a.crt").read_bytes()
    done = certs("--region", "a", "--days", "7", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("kept certs/ca.crt")
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == ca
    new_a = x509.load_pem_x509_certificate((tmp_path / "certs" / "a.crt").read_bytes())
    assert new_a.public_bytes(Encoding.PEM) != old_a
    new_a.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert (new_a.not_valid_after_utc - new_a.not_valid_before_utc).days == 7
    assert certs("--region", "a", "--new-ca", cwd=tmp_path).stdout.startswith("wrote certs/ca.crt")
    assert (tmp_path / "certs" / "ca.crt").read_bytes() != ca


def test_default_regions_are_the_quickstart(tmp_path: Path) -> None:
    assert certs(cwd=tmp_path).returncode == 0
    for region in load_config(QUICKSTART_PATH).region_names:
        assert regions_named(x509.load_pem_x509_certificate((tmp_path / "certs" / f"{region}.crt").read_bytes())) == (
            region,
        )


def test_bad_days() -> None:
    done = certs("--region", "a", "--days", "0", cwd=Path("/tmp"))
    assert done.returncode == 2 and "--days" in done.stderr


def test_peer_identity_from_an_auth_context() -> None:
    pair = make_region_cert(make_ca(), "us-west")
    verified = {"transport_security_type": [b"ssl"], "x509_pem_cert": [pair.cert]}
    identity = peer_identity(verified)
    assert identity.verified and identity.regions == ("us-west",)
    assert identity.describe() == "a certificate of region us-west (CN=meshgate region us-west)"
    # TLS without a client certificate, and plaintext: no identity.
    assert not peer_identity({"transport_security_type": [b"ssl"]}).verified
    assert not peer_identity({"transport_security_type": [b"insecure"], "x509_pem_cert": [pair.cert]}).verified
    assert not peer_identity({}).verified


def test_tls_files_refuse_a_key_of_another_certificate(tmp_path: Path) -> None:
    ca = make_ca()
    a, b = make_region_cert(ca, "a"), make_region_cert(ca, "b")
    (tmp_path / "a.crt").write_bytes(a.cert)
    (tmp_path / "b.key").write_bytes(b.key)
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    with pytest.raises(TlsError, match="is not the key of the certificate"):
        TlsFiles(ca=tmp_path / "ca.crt", cert=tmp_path / "a.crt", key=tmp_path / "b.key").read()
    with pytest.raises(ValueError, match="give both or neither"):
        TlsFiles(ca=None, cert=tmp_path / "a.crt")


def test_a_server_keeps_its_certificate_until_the_new_files_hold_together(tmp_path: Path) -> None:
    from meshgate.tls import ServerTls, write_pair

    ca = make_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    files = TlsFiles(ca=tmp_path / "ca.crt", cert=tmp_path / "a.crt", key=tmp_path / "a.key")
    first = make_region_cert(ca, "a")
    write_pair(first, tmp_path / "a.crt", tmp_path / "a.key")
    server = ServerTls(files, require_client_auth=True)
    assert server._fetch() is None  # nothing changed
    # Half-way through a rotation: the new certificate beside the old key.
    second = make_region_cert(ca, "a")
    write_pair(second, tmp_path / "a.crt", None)
    assert server._fetch() is None
    assert "is not the key of the certificate" in server.last_error
    assert server.certificate is not None and server.certificate.serial_number == first.certificate.serial_number
    # The key arrives: the next handshake gets the new pair.
    write_pair(second, tmp_path / "a.crt", tmp_path / "a.key")
    assert server._fetch() is not None
    assert server.reloads == 1 and server.last_error == ""
    assert server.certificate is not None and server.certificate.serial_number == second.certificate.serial_number
    assert server._fetch() is None


def test_a_ca_whose_key_is_not_its_own_is_not_reused(tmp_path: Path) -> None:
    assert certs("--region", "a", cwd=tmp_path).returncode == 0
    # The CA's key swapped for a region's: certificates signed with it would not chain to ca.crt.
    (tmp_path / "certs" / "ca.key").write_bytes((tmp_path / "certs" / "a.key").read_bytes())
    done = certs("--region", "b", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot reuse the CA" in done.stderr and "is not the key of the certificate" in done.stderr
    assert "--new-ca" in done.stderr
    assert not (tmp_path / "certs" / "b.crt").exists()


def test_the_ca_only_signs_certificates_and_a_leaf_only_signs_and_agrees_keys() -> None:
    ca = make_ca()
    leaf = make_region_cert(ca, "a")
    usage = {
        name: pair.certificate.extensions.get_extension_for_class(x509.KeyUsage)
        for name, pair in (("ca", ca), ("leaf", leaf))
    }
    assert all(ext.critical for ext in usage.values())
    ca_usage, leaf_usage = usage["ca"].value, usage["leaf"].value
    assert (ca_usage.key_cert_sign, ca_usage.crl_sign, ca_usage.digital_signature, ca_usage.key_agreement) == (
        True,
        True,
        False,
        False,
    )
    assert (leaf_usage.key_cert_sign, leaf_usage.crl_sign, leaf_usage.digital_signature, leaf_usage.key_agreement) == (
        False,
        False,
        True,
        True,
    )
