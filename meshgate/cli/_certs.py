"""``meshgate certs [--out DIR] [-c FILE | --region NAME...] [--days N]``: a development CA and certificates.

Writes DIR/ca.crt and DIR/ca.key (the CA; kept and reused when they exist, so a region's
certificate can be made again, e.g. to rotate it, under the same CA), DIR/<region>.crt and
DIR/<region>.key per region, and DIR/<client>.crt and .key for the command-line tools. Keys are
written 0600. The regions are those of FILE, those named with --region, or the quickstart's.

For development and tests: a production mesh takes its certificates from the organisation's CA
(cert-manager, Vault, ...); a region certificate only needs the SANs URI:meshgate://region/<name>
and DNS:<name>, and the serverAuth and clientAuth key usages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgate.tls import CertPair

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "certs",
        help="make a development CA and a certificate per region",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("certs"), help="the folder to write to (default ./certs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("-c", "--config", type=Path, help="make certificates for the regions of this mesh file")
    which.add_argument("--region", action="append", default=[], metavar="NAME", help="a region (repeat for more)")
    p.add_argument("--days", type=int, default=90, help="validity of the region and client certificates (default 90)")
    p.add_argument("--ca-days", type=int, default=365, help="validity of a new CA (default 365)")
    p.add_argument(
        "--host", action="append", default=[], metavar="NAME", help="an extra DNS name or IP for every region"
    )
    p.add_argument("--client", default="client", metavar="NAME", help="name of the client certificate (default client)")
    p.add_argument("--new-ca", action="store_true", help="make a new CA even if DIR/ca.crt exists")
    p.set_defaults(func=run)


def _regions(args: argparse.Namespace) -> list[tuple[str, list[str]]] | None:
    """(name, gateway hosts) per region; None after printing why not."""
    from meshgate.config import QUICKSTART_PATH, ConfigError, load_config, split_host_port

    if args.region:
        return [(name, []) for name in dict.fromkeys(args.region)]
    path: Path = args.config or QUICKSTART_PATH
    try:
        # The certificates the file names are the ones about to be made; the secrets' variables
        # belong to the gateways, not to whoever makes certificates.
        config = load_config(path, check_files=False, need_secrets=False)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return None
    out = []
    for region in config.regions:
        hosts = []
        if region.gateway:
            host, _ = split_host_port(region.gateway)
            if host not in ("0.0.0.0", "::"):
                hosts.append(host)
        out.append((region.name, hosts))
    return out


def _ca(out: Path, args: argparse.Namespace) -> tuple[CertPair, bool] | None:
    from meshgate.tls import CertPair, check_pair, make_ca, write_pair

    cert, key = out / "ca.crt", out / "ca.key"
    if not args.new_ca and cert.exists():
        try:
            # The tls package's own check: readable PEM files, and a key that is the certificate's.
            cert_pem, key_pem, _ = check_pair(cert, key)
            pair = CertPair(cert=cert_pem, key=key_pem)
        except OSError as exc:
            print(f"error: cannot reuse the CA in {out} ({exc}); pass --new-ca to make a new one", file=sys.stderr)
            return None
        return pair, False
    pair = make_ca(days=args.ca_days)
    write_pair(pair, cert, key)
    return pair, True


def run(args: argparse.Namespace) -> int:
    from meshgate.tls import make_client_cert, make_region_cert, write_pair

    if args.days < 1 or args.ca_days < 1:
        print("error: --days and --ca-days must be 1 or more", file=sys.stderr)
        return 2
    regions = _regions(args)
    if regions is None:
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    made = _ca(out, args)
    if made is None:
        return 1
    ca, new = made
    shown = Path(os.path.abspath(out))
    print(f"{'wrote' if new else 'kept'} {out / 'ca.crt'}, {out / 'ca.key'} (the CA; keep ca.key private)")
    for name, hosts in regions:
        pair = make_region_cert(ca, name, hosts=[*hosts, *args.host], days=args.days)
        write_pair(pair, out / f"{name}.crt", out / f"{name}.key")
        print(f"wrote {out / f'{name}.crt'}, {out / f'{name}.key'} (region {name})")
    client = make_client_cert(ca, args.client, days=args.days)
    write_pair(client, out / f"{args.client}.crt", out / f"{args.client}.key")
    print(f"wrote {out / f'{args.client}.crt'}, {out / f'{args.client}.key'} (client {args.client})")
    print("\nIn the mesh file:\n")
    print("event_mesh:")
    print("  security:")
    print(f"    ca: {shown / 'ca.crt'}")
    print("  regions:")
    for name, _ in regions:
        print(f"    - name: {name}")
        print(f"      tls: {{cert: {shown / f'{name}.crt'}, key: {shown / f'{name}.key'}}}")
    print("\nFor publish, tail, status and trace:\n")
    print(f"  --ca {shown / 'ca.crt'} --cert {shown / f'{args.client}.crt'} --cert-key {shown / f'{args.client}.key'}")
    return 0
