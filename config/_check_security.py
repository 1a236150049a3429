"""Cross-checks of event_mesh.security: client tokens, the replication secret, TLS and its files."""

from __future__ import annotations

import re
from pathlib import Path as FsPath

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshgate.config._check import CheckContext, base_dir, client_certs_mode, file_path
from meshgate.config._model import ClientCerts, ReplicationMode
from meshgate.config._yaml import Path
from meshgate.tls import TlsError, check_pair, read_ca, regions_named
from meshgate.topics import validate_pattern

# A client token is one variable reference and nothing else: a default would be a secret in the file.
TOKEN_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-.*\}", re.DOTALL)
# What an HTTP/2 header value carries as is: printable ASCII, no spaces.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
MIN_TOKEN_CHARS = 16
# The variable the docs, the Helm chart and the test suite use for security.replication_secret.
REPLICATION_SECRET_VARIABLE = "MESH_REPLICATION_SECRET"
SECRET_PATH: Path = ("event_mesh", "security", "replication_secret")


def check_tokens(ctx: CheckContext, tokens: list[object]) -> None:
    """Each client token is exactly one ``${VAR}`` reference to a usable secret; names and tokens unique."""
    names: dict[str, int] = {}
    secrets: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(tokens):
        if not isinstance(entry, dict):
            continue
        base: Path = ("event_mesh", "security", "tokens", i)
        name = entry.get("name")
        label = name if isinstance(name, str) else f"#{i}"
        if isinstance(name, str) and (*base, "name") not in ctx.doc.broken:
            if name in names:
                ctx.add(
                    (*base, "name"),
                    f"client {name!r} is listed twice (first as tokens[{names[name]}]); give each client its own name",
                )
            else:
                names[name] = i
        for what in ("publish", "subscribe"):
            patterns = entry.get(what)
            if not isinstance(patterns, list):
                continue
            for j, pattern in enumerate(patterns):
                if isinstance(pattern, str):
                    reason = validate_pattern(pattern)
                    if reason is not None:
                        ctx.add((*base, what, j), reason)
        if "token" in entry:
            secret = _check_token(ctx, (*base, "token"), entry["token"])
            if secret is not None:
                if secret[1] in secrets:
                    first, first_name = secrets[secret[1]]
                    ctx.add(
                        (*base, "token"),
                        f"client {label!r} has the same token as tokens[{first}] ({first_name!r});"
                        " give each client its own token",
                    )
                else:
                    secrets[secret[1]] = (i, label)


def _check_token(
    ctx: CheckContext,
    path: Path,
    value: object,
    *,
    what: str = "token",
    example: str = "ORDERS_TOKEN",
    owner: str = "the client's token",
) -> tuple[str, str] | None:
    """(variable, secret) when a secret (a client token, the replication secret: ``what``) is a usable
    single reference; else adds why. Never shows the value."""
    if path in ctx.doc.broken or isinstance(value, list | dict):
        return None  # an unset variable or a list: already reported
    written = ctx.doc.substituted.get(path)
    if written is None:
        if value is None:
            ctx.add(path, f"the {what} is empty; write one environment variable reference such as ${{{example}}}")
        else:
            ctx.add(
                path,
                f"a {what} written in the file is refused (files get copied, committed and shown);"
                f" write one environment variable reference such as ${{{example}}} and set that variable"
                " where the gateway runs",
            )
        return None
    raw, token = written
    ref = TOKEN_REFERENCE.fullmatch(raw)
    if ref is None:
        if _TOKEN_DEFAULT.fullmatch(raw):
            ctx.add(
                path,
                f"a {what} cannot have a default (${{NAME:-...}}): the default would be a secret in"
                " the file; write ${NAME} alone",
            )
        else:
            ctx.add(
                path,
                f"a {what} must be exactly one environment variable reference such as ${{{example}}},"
                " with nothing before or after it",
            )
        return None
    variable = ref.group("name")
    if not token:
        ctx.add(path, f"environment variable {variable} is empty; set it to {owner}")
        return None
    if _TOKEN_CHARS.fullmatch(token) is None:
        ctx.add(
            path,
            f"environment variable {variable} holds characters a gRPC header cannot carry;"
            f" a {what} is printable ASCII without spaces (e.g. from openssl rand -hex 32)",
        )
        return None
    if len(token) < MIN_TOKEN_CHARS:
        ctx.add(
            path,
            f"environment variable {variable} holds a {what} of {len(token)} characters; use at least"
            f" {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 32)",
        )
        return None
    return variable, token


def check_replication(ctx: CheckContext, security: dict[str, object]) -> None:
    """The replication secret is a usable reference; anonymous replication is not mixed with a credential."""
    if "replication_secret" in security:
        _check_token(
            ctx,
            SECRET_PATH,
            security["replication_secret"],
            what="replication secret",
            example=REPLICATION_SECRET_VARIABLE,
            owner="the secret the regions share (e.g. from openssl rand -hex 32)",
        )
    if security.get("replication") != ReplicationMode.ANONYMOUS.value:
        return
    # A gateway asking for a credential while the file says nobody needs one: one of the two is a mistake.
    for key, what in (("ca", "a certificate of the mesh CA"), ("replication_secret", "the shared secret")):
        if key in security:
            ctx.add(
                ("event_mesh", "security", "replication"),
                f"replication: anonymous contradicts security.{key}, which makes every Replicate caller show"
                f" {what}; remove one of the two",
            )


def check_security(ctx: CheckContext, security: dict[str, object], regions: list[object]) -> None:
    """TLS settings that hold together, and certificate files that exist and fit their region."""
    base: Path = ("event_mesh", "security")
    folder = base_dir(ctx.source)
    ca = security.get("ca")
    ca_certs: list[x509.Certificate] | None = None
    if ctx.check_files and isinstance(ca, str) and ca and (*base, "ca") not in ctx.doc.broken:
        try:
            ca_certs = read_ca(file_path(folder, ca))[1]
        except TlsError as exc:
            ctx.add((*base, "ca"), str(exc))
    tls_on = "ca" in security
    mode = client_certs_mode(security.get("client_certs"))
    if mode in (ClientCerts.OPTIONAL.value, ClientCerts.REQUIRED.value) and not tls_on:
        ctx.add(
            (*base, "client_certs"),
            "client_certs applies only with security.ca set (the CA that signs client certificates)",
            key=True,
        )
    elif tls_on and mode in (ClientCerts.OFF.value, ClientCerts.OPTIONAL.value):
        ctx.add(
            (*base, "client_certs"),
            f"client_certs {mode} cannot be served: a gateway serves clients and peers on one port, Replicate"
            " needs the peer's certificate, and gRPC Python can only require a client certificate or not ask"
            " for one; use required and give clients a certificate of the CA (meshgate certs makes one)",
        )
    for i, region in enumerate(regions):
        if isinstance(region, dict):
            _check_region_tls(ctx, i, region, tls_on=tls_on, folder=folder, ca_certs=ca_certs)


def _check_region_tls(
    ctx: CheckContext,
    i: int,
    region: dict[str, object],
    *,
    tls_on: bool,
    folder: FsPath,
    ca_certs: list[x509.Certificate] | None,
) -> None:
    """A region's ``tls``: present exactly when security.ca is, and its files a pair that fits the region."""
    rbase: Path = ("event_mesh", "regions", i)
    name = region.get("name")
    label = f"region {name}" if isinstance(name, str) else f"region #{i + 1}"
    tls = region.get("tls")
    if tls is None:
        if tls_on:
            ctx.add(
                rbase,
                f"{label} has no tls: {{cert, key}}; with security.ca set every gateway serves TLS only"
                " and shows its region's certificate to clients and peers",
            )
        return
    if not tls_on:
        ctx.add(
            (*rbase, "tls"),
            "tls needs security.ca: the mesh CA that signed the regions' certificates",
            key=True,
        )
        return
    if not isinstance(tls, dict):
        return
    cert, key = tls.get("cert"), tls.get("key")
    if not (ctx.check_files and isinstance(cert, str) and cert and isinstance(key, str) and key):
        return
    if ctx.region is not None and name != ctx.region:
        # Another region's files live on its own gateways (a Kubernetes pod mounts only its
        # region's Secret); this gateway never reads them.
        return
    if (*rbase, "tls", "cert") in ctx.doc.broken or (*rbase, "tls", "key") in ctx.doc.broken:
        return
    key_path = file_path(folder, key)
    try:
        leaf = check_pair(file_path(folder, cert), key_path)[2]
    except TlsError as exc:
        which = "key" if exc.path == key_path else "cert"
        ctx.add((*rbase, "tls", which), str(exc))
        return
    if isinstance(name, str) and (*rbase, "name") not in ctx.doc.broken:
        _check_region_cert(ctx, (*rbase, "tls", "cert"), name, cert, leaf, ca_certs=ca_certs)


def _check_region_cert(
    ctx: CheckContext,
    path: Path,
    name: str,
    file: str,
    leaf: x509.Certificate,
    *,
    ca_certs: list[x509.Certificate] | None,
) -> None:
    named = regions_named(leaf)
    if named != (name,):
        shown = ", ".join(named) if named else "no region"
        ctx.add(
            path,
            f"the certificate {file} names {shown}, not region {name}: a region's certificate carries exactly"
            f" one SAN URI:meshgate://region/{name} (meshgate certs --region {name} makes one)",
        )
    try:
        dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        dns = []
    if name not in dns:
        ctx.add(
            path,
            f"the certificate {file} lacks the SAN DNS:{name}; peers replicating to region {name}"
            " expect its gateway to present that name",
        )
    if ca_certs is not None and not any(_issued_by(leaf, ca) for ca in ca_certs):
        ctx.add(path, f"the certificate {file} is not signed by the CA of security.ca")


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
