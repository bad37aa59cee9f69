"""`edge-runtime keys` commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `keys` commands to the top-level parser."""
    group = sub.add_parser("keys", help="manage Ed25519 keys for signing model bundles")
    ksub = group.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = ksub.add_parser("generate", help="create an Ed25519 key pair and print its key id")
    p.add_argument("--out", type=Path, required=True, help="directory for NAME.key (private, 0600) and NAME.pub")
    p.add_argument("--name", default="signing", help="file name stem (default: signing)")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from edge_runtime.models import generate_keypair

    pair = generate_keypair(args.out, name=args.name)
    print(f"private key: {pair.private_key}  (keep it secret; mode 0600)")
    print(f"public key:  {pair.public_key}  (give this to devices as a trusted key)")
    print(f"key id: {pair.key_id}")
    return 0
