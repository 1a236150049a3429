"""The mesh file's TLS settings: what loads, what is refused (FILE:LINE:COL), what needs a restart."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from meshgate.config import ClientCerts, ConfigError, check_compatible, load_config, region_changes
from tests.security._pki import Pki

MESH = """\
event_mesh:
  security:
    ca: {ca}
  regions:
    - name: us-west
      kind: embedded
      gateway: 127.0.0.1:7401
      tls: {{cert: {us_cert}, key: {us_key}}}
    - name: eu-central
      kind: embedded
      gateway: 127.0.0.1:7402
      tls: {{cert: {eu_cert}, key: {eu_key}}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A mesh folder with certs/ made by the product's own code."""
    pki = Pki(tmp_path / "certs")
    pki.regions(["us-west", "eu-central", "ap-south"])
    return tmp_path


def write(folder: Path, text: str, name: str = "mesh.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def mesh_text(**paths: str) -> str:
    """MESH with the files of the folder's certs/, but for ``paths``."""
    values = {
        "ca": "certs/ca.crt",
        "us_cert": "certs/us-west.crt",
        "us_key": "certs/us-west.key",
        "eu_cert": "certs/eu-central.crt",
        "eu_key": "certs/eu-central.key",
        **paths,
    }
    return MESH.format(**values)


def mesh(folder: Path, **paths: str) -> Path:
    return write(folder, mesh_text(**paths))


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return list(info.value.lines)


def test_paths_are_taken_from_the_mesh_file_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mesh(folder)
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.security.ca == folder / "certs" / "ca.crt"
    assert config.security.client_certs is ClientCerts.REQUIRED
    tls = config.region("us-west").tls
    assert (
        tls is not None and tls.cert == folder / "certs" / "us-west.crt" and tls.key == folder / "certs" / "us-west.key"
    )


def test_paths_come_through_variables_and_symlinks_are_kept(folder: Path, tmp_path: Path) -> None:
    # A Kubernetes Secret volume: files are symlinks through ..data, swapped on rotation.
    link = tmp_path / "mounted"
    link.symlink_to(folder / "certs")
    text = mesh_text(
        ca="${CERTS}/ca.crt",
        us_cert='"${CERTS}/us-west.crt"',
        us_key='"${CERTS}/us-west.key"',
        eu_cert='"${CERTS}/eu-central.crt"',
        eu_key='"${CERTS}/eu-central.key"',
    )
    config = load_config(write(folder, text), env={"CERTS": str(link)})
    assert config.security.ca == link / "ca.crt"


def test_plaintext_mesh_has_no_security(folder: Path) -> None:
    config = load_config(write(folder, "event_mesh:\n  regions:\n    - name: a\n      kind: embedded\n"))
    assert config.security.ca is None and not config.security.tls
    assert config.region("a").tls is None


def test_ca_set_but_a_region_lacks_tls(folder: Path) -> None:
    text = mesh_text(eu_cert="x", eu_key="y").replace("      tls: {cert: x, key: y}\n", "")
    assert errors(write(folder, text)) == [
        f"{folder}/mesh.yaml:9:7: event_mesh.regions[1]: region eu-central has no tls: {{cert, key}}; with"
        " security.ca set every gateway serves TLS only and shows its region's certificate to clients and peers"
    ]


def test_tls_without_ca(folder: Path) -> None:
    text = mesh_text().replace("  security:\n    ca: certs/ca.crt\n", "")
    assert errors(write(folder, text)) == [
        f"{folder}/mesh.yaml:6:7: event_mesh.regions[0].tls: tls needs security.ca: the mesh CA that signed the"
        " regions' certificates",
        f"{folder}/mesh.yaml:10:7: event_mesh.regions[1].tls: tls needs security.ca: the mesh CA that signed the"
        " regions' certificates",
    ]


def test_missing_and_unreadable_files_are_named(folder: Path) -> None:
    (folder / "certs" / "eu-central.key").chmod(0o000)
    path = mesh(folder, ca="certs/nope.crt", us_cert="certs/missing.crt")
    found = errors(path)
    assert found[0] == (
        f"{path}:3:9: event_mesh.security.ca: cannot read the CA file {folder}/certs/nope.crt:"
        " No such file or directory"
    )
    assert found[1] == (
        f"{path}:8:19: event_mesh.regions[0].tls.cert: cannot read the certificate {folder}/certs/missing.crt:"
        " No such file or directory"
    )
    if os.geteuid() != 0:  # root reads a 0000 file anyway
        assert f"cannot read the private key {folder}/certs/eu-central.key" in found[2]


def test_a_key_that_is_not_the_certificate_key(folder: Path) -> None:
    path = mesh(folder, us_key="certs/eu-central.key")
    assert errors(path) == [
        f"{path}:8:19: event_mesh.regions[0].tls.cert: the private key {folder}/certs/eu-central.key is not the key"
        f" of the certificate {folder}/certs/us-west.crt"
    ]


def test_a_certificate_of_another_region(folder: Path) -> None:
    path = mesh(folder, us_cert="certs/ap-south.crt", us_key="certs/ap-south.key")
    found = errors(path)
    assert len(found) == 2
    assert all(
        e.startswith(f"{path}:8:19: event_mesh.regions[0].tls.cert: the certificate certs/ap-south.crt") for e in found
    )
    assert any("names ap-south, not region us-west" in e for e in found)
    assert any("lacks the SAN DNS:us-west" in e for e in found)


def test_a_certificate_of_another_ca(folder: Path) -> None:
    other = Pki(folder / "other")
    other.regions(["us-west"])
    path = mesh(folder, us_cert="other/us-west.crt", us_key="other/us-west.key")
    assert errors(path) == [
        f"{path}:8:19: event_mesh.regions[0].tls.cert: the certificate other/us-west.crt is not signed by the CA"
        " of security.ca"
    ]


def test_not_pem(folder: Path) -> None:
    (folder / "certs" / "ca.crt").write_text("hello\n")
    path = mesh(folder)
    assert errors(path) == [
        f"{path}:3:9: event_mesh.security.ca: the CA file {folder}/certs/ca.crt holds no PEM certificate"
    ]


@pytest.mark.parametrize("mode", ["off", "optional"])
def test_client_certs_other_than_required_cannot_be_served(folder: Path, mode: str) -> None:
    path = write(
        folder,
        mesh(folder).read_text().replace("    ca: certs/ca.crt\n", f"    ca: certs/ca.crt\n    client_certs: {mode}\n"),
    )
    (found,) = errors(path)
    assert found.startswith(f"{path}:4:19: event_mesh.security.client_certs: client_certs {mode} cannot be served")
    assert "gRPC Python can only require a client certificate or not ask for one" in found


def test_client_certs_off_is_the_plaintext_mesh(folder: Path) -> None:
    for value in ("off", '"off"'):
        text = f"event_mesh:\n  security:\n    client_certs: {value}\n  regions:\n    - name: a\n      kind: embedded\n"
        config = load_config(write(folder, text))
        assert config.security.client_certs is ClientCerts.OFF and config.security.ca is None


def test_client_certs_without_ca(folder: Path) -> None:
    text = "event_mesh:\n  security:\n    client_certs: required\n  regions:\n    - name: a\n      kind: embedded\n"
    assert errors(write(folder, text)) == [
        f"{folder}/mesh.yaml:3:5: event_mesh.security.client_certs: client_certs applies only with security.ca set"
        " (the CA that signs client certificates)"
    ]


def test_unknown_security_key_and_tls_shape(folder: Path) -> None:
    text = mesh(folder).read_text().replace("    ca: certs/ca.crt\n", "    ca: certs/ca.crt\n    cacert: x\n")
    text = text.replace(
        "tls: {cert: certs/eu-central.crt, key: certs/eu-central.key}", "tls: {cert: certs/eu-central.crt}"
    )
    found = errors(write(folder, text))
    assert any("event_mesh.security.cacert: unknown key 'cacert'" in e for e in found), found
    assert any("event_mesh.regions[1].tls: missing the required key 'key'" in e for e in found), found


def test_check_files_false_reads_the_file_without_its_certificates(folder: Path) -> None:
    path = mesh(folder, ca="certs/not-yet.crt", us_cert="certs/not-yet-us.crt")
    config = load_config(path, check_files=False)
    assert config.security.ca == folder / "certs" / "not-yet.crt"


def test_what_needs_a_restart(folder: Path) -> None:
    old = load_config(mesh(folder))
    # Another region's certificate paths: nothing this gateway uses.
    new = load_config(mesh(folder, eu_cert="certs/../certs/eu-central.crt", eu_key="./certs/eu-central.key"))
    assert check_compatible(old, new, "us-west") is None
    # This region's own paths, or the CA's: the server's files are fixed when it starts.
    pki2 = Pki(folder / "certs2")
    pki2.regions(["us-west", "eu-central"])
    moved = load_config(
        mesh(
            folder,
            ca="certs2/ca.crt",
            us_cert="certs2/us-west.crt",
            us_key="certs2/us-west.key",
            eu_cert="certs2/eu-central.crt",
            eu_key="certs2/eu-central.key",
        )
    )
    reason = check_compatible(old, moved, "us-west")
    assert reason is not None and reason.startswith("restart needed: security.ca ")
    assert (
        f"tls cert {folder}/certs/us-west.crt, key {folder}/certs/us-west.key -> cert {folder}/certs2/us-west.crt"
        in reason
    )
    assert region_changes(old.region("us-west"), moved.region("us-west")) == [
        f"tls cert {folder}/certs/us-west.crt, key {folder}/certs/us-west.key"
        f" -> cert {folder}/certs2/us-west.crt, key {folder}/certs2/us-west.key"
    ]


# --- one mesh file, one region's certificate per machine (a Kubernetes pod) -------------------

# The Helm chart's shape: every region's tls names the pod's own Secret through the same variables.
POD_MESH = """\
event_mesh:
  security:
    ca: ${MESHGATE_TLS_CA_FILE}
  regions:
    - name: us-west
      kind: embedded
      gateway: 127.0.0.1:7401
      tls: {cert: "${MESHGATE_TLS_CERT_FILE}", key: "${MESHGATE_TLS_KEY_FILE}"}
    - name: eu-central
      kind: embedded
      gateway: 127.0.0.1:7402
      tls: {cert: "${MESHGATE_TLS_CERT_FILE}", key: "${MESHGATE_TLS_KEY_FILE}"}
    - name: ap-south
      kind: embedded
      gateway: 127.0.0.1:7403
      tls: {cert: /not/on/this/machine/ap-south.crt, key: /not/on/this/machine/ap-south.key}
"""


def pod_env(folder: Path, region: str) -> dict[str, str]:
    """What the chart sets: the paths of the region's mounted Secret (here: that region's files only)."""
    mounted = folder / f"pod-{region}"
    mounted.mkdir(exist_ok=True)
    for src, dst in (("ca.crt", "ca.crt"), (f"{region}.crt", "tls.crt"), (f"{region}.key", "tls.key")):
        (mounted / dst).write_bytes((folder / "certs" / src).read_bytes())
    return {
        "MESHGATE_TLS_CA_FILE": str(mounted / "ca.crt"),
        "MESHGATE_TLS_CERT_FILE": str(mounted / "tls.crt"),
        "MESHGATE_TLS_KEY_FILE": str(mounted / "tls.key"),
    }


def errors_as(path: Path, env: dict[str, str], region: str | None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env, region=region)
    return list(info.value.lines)


def test_a_gateway_reads_only_the_ca_and_its_own_regions_files(folder: Path) -> None:
    path = write(folder, POD_MESH)
    for region in ("us-west", "eu-central"):
        env = pod_env(folder, region)
        config = load_config(path, env=env, region=region)
        tls = config.region(region).tls
        assert tls is not None and str(tls.cert) == env["MESHGATE_TLS_CERT_FILE"]
        assert str(config.security.ca) == env["MESHGATE_TLS_CA_FILE"]


def test_without_a_region_every_regions_files_are_still_checked(folder: Path) -> None:
    path = write(folder, POD_MESH)
    found = errors_as(path, pod_env(folder, "us-west"), None)
    # eu-central's entry resolves to us-west's certificate, ap-south's files are elsewhere.
    assert any(e.startswith(f"{path}:12:19: event_mesh.regions[1].tls.cert: the certificate ") for e in found), found
    assert any("names us-west, not region eu-central" in e for e in found), found
    assert f"{path}:16:19: event_mesh.regions[2].tls.cert: cannot read the certificate" in "\n".join(found), found
    assert not [e for e in found if "regions[0]" in e]


def test_the_serving_regions_own_files_and_the_ca_are_checked_with_positions(folder: Path) -> None:
    path = write(folder, POD_MESH)
    env = pod_env(folder, "us-west")
    (folder / "pod-us-west" / "tls.crt").unlink()
    assert errors_as(path, env, "us-west") == [
        f"{path}:8:19: event_mesh.regions[0].tls.cert: cannot read the certificate {folder}/pod-us-west/tls.crt:"
        " No such file or directory"
    ]
    env = pod_env(folder, "eu-central")  # a pod of eu-central given us-west's Secret by mistake
    (folder / "pod-eu-central" / "tls.crt").write_bytes((folder / "certs" / "us-west.crt").read_bytes())
    (folder / "pod-eu-central" / "tls.key").write_bytes((folder / "certs" / "us-west.key").read_bytes())
    found = errors_as(path, env, "eu-central")
    assert found and all(e.startswith(f"{path}:12:19: event_mesh.regions[1].tls.cert: ") for e in found), found
    assert any("names us-west, not region eu-central" in e for e in found)
    env["MESHGATE_TLS_CA_FILE"] = str(folder / "nope.crt")
    assert f"{path}:3:9: event_mesh.security.ca: cannot read the CA file {folder}/nope.crt" in "\n".join(
        errors_as(path, env, "eu-central")
    )


def test_config_validate_with_and_without_a_region(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshgate.cli import main

    path = write(folder, POD_MESH)
    for name, value in pod_env(folder, "us-west").items():
        monkeypatch.setenv(name, value)
    assert main(["config", "validate", "--region", "us-west", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (3 regions, 0 rules)\n"
    assert main(["config", "validate", str(path)]) == 1
    assert "names us-west, not region eu-central" in capsys.readouterr().err
    assert main(["config", "validate", "--region", "us-wset", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: --region us-wset is not a region of the file (regions: us-west, eu-central, ap-south)\n"
    )


async def test_a_reload_reads_only_the_watching_regions_files(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshgate.config import ConfigWatcher

    path = write(folder, POD_MESH)
    for name, value in pod_env(folder, "eu-central").items():
        monkeypatch.setenv(name, value)
    applied: list[object] = []
    watcher = ConfigWatcher(path=path, on_change=applied.append, poll_interval=0, region="eu-central")
    await watcher.start()
    try:
        write(folder, POD_MESH.replace("127.0.0.1:7403", "127.0.0.1:7404"))
        result = await watcher.reload()
        assert result.applied, result.errors
        assert len(applied) == 1
    finally:
        await watcher.stop()


def test_a_device_a_fifo_or_a_huge_file_is_refused_not_read(folder: Path) -> None:
    os.mkfifo(folder / "certs" / "fifo.crt")
    (folder / "certs" / "huge.crt").write_bytes(b"x" * (1024 * 1024 + 1))
    for ca, says in [
        ("/dev/zero", "the CA file /dev/zero is not a regular file"),
        ("certs/fifo.crt", f"the CA file {folder}/certs/fifo.crt is not a regular file"),
        ("certs/huge.crt", f"the CA file {folder}/certs/huge.crt is over 1048576 bytes"),
    ]:
        path = mesh(folder, ca=ca)
        assert errors(path)[0].startswith(f"{path}:3:9: event_mesh.security.ca: {says}"), ca


def test_a_bad_key_is_reported_at_the_key_a_mismatched_one_at_the_certificate(folder: Path) -> None:
    (folder / "certs" / "garbage.key").write_text("not a key\n")
    path = mesh(folder, us_key="certs/garbage.key")
    line = path.read_text().splitlines()[7]
    key_column = line.index("certs/garbage.key") + 1
    [found] = errors(path)
    assert found.startswith(f"{path}:8:{key_column}: event_mesh.regions[0].tls.key: the private key"), found
    # A key that is readable but another certificate's: the certificate is what does not match it.
    path = mesh(folder, us_key="certs/eu-central.key")
    assert errors(path)[0].startswith(f"{path}:8:19: event_mesh.regions[0].tls.cert: ")
