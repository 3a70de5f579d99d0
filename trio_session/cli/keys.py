"""``trio-session keygen`` and ``trio-session registry``: identities and trust.

``keygen PATH`` writes a private identity (mode 0600) and, beside it,
``PATH.pub`` with the public key as 64 hex digits: the file to hand to the other
side (``connect --venue-key venue.key.pub``, ``registry add … alice.key.pub``).
``registry add/revoke/list`` edit the venue's registry file of participant keys.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import trio_session as ts

from .args import Parser, Subparsers, load_registry, public_key
from .errors import EXIT_OK, CliError
from .output import add_output_options, emit_json

__all__ = ["add_keygen_parser", "add_registry_parser"]


def add_keygen_parser(sub: Subparsers, common: Parser) -> None:
    p = sub.add_parser(
        "keygen",
        parents=[common],
        help="write a new identity file and print its public key",
        description="Write a new Ed25519 identity to PATH (mode 0600) and its public key to "
        "PATH.pub; print the key id and the public key.",
    )
    p.add_argument("path", help="identity file to create")
    p.add_argument("--key-id", help="key id (default: derived from the public key)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    add_output_options(p, json_help="print one JSON object", live=False)
    p.set_defaults(run=keygen)


def keygen(args: argparse.Namespace) -> int:
    path: str = args.path
    pub = path + ".pub"
    for target in (path, pub):
        if os.path.lexists(target) and not args.force:
            raise CliError(f"{target} exists; use --force to overwrite it (the old key is lost)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CliError(f"{path}: directory {directory} does not exist")
    try:
        identity = ts.Identity.generate(key_id=args.key_id)
    except ValueError as exc:
        raise CliError(f"--key-id {args.key_id!r}: {exc}") from None
    try:
        identity.save(path)
        with open(pub, "w", encoding="ascii") as f:
            f.write(identity.public_key_hex + "\n")
    except OSError as exc:
        raise CliError(f"{exc.filename or path}: cannot write ({exc.strerror})") from None
    if args.json:
        emit_json(
            {
                "key_id": identity.key_id,
                "public_key": identity.public_key_hex,
                "identity_file": path,
                "public_key_file": pub,
            }
        )
    else:
        print(f"key_id     {identity.key_id}")
        print(f"public_key {identity.public_key_hex}")
        print(f"wrote {path} (private, mode 0600) and {pub} (public)")
    return EXIT_OK


def add_registry_parser(sub: Subparsers, common: Parser) -> None:
    p = sub.add_parser(
        "registry",
        help="add, revoke or list participant keys in a registry file",
        description="Edit the venue's registry of participant public keys (a JSON file).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[common], help="trust a participant's public key (creates the file)"
    )
    add.add_argument("path", help="registry file")
    add.add_argument("key_id", help="the participant's key id (keygen printed it)")
    add.add_argument("public_key", help="64 hex digits, or the participant's .pub file")
    add_output_options(add, json_help="print one JSON object", live=False)
    add.set_defaults(run=registry_add)
    revoke = actions.add_parser(
        "revoke", parents=[common], help="revoke a key id (a running venue keeps its old copy)"
    )
    revoke.add_argument("path", help="registry file")
    revoke.add_argument("key_id")
    add_output_options(revoke, json_help="print one JSON object", live=False)
    revoke.set_defaults(run=registry_revoke)
    show = actions.add_parser("list", parents=[common], help="list the keys in a registry file")
    show.add_argument("path", help="registry file")
    add_output_options(show, json_help="print one JSON object", live=False)
    show.set_defaults(run=registry_list)


def _save(registry: ts.KeyRegistry, path: str) -> None:
    try:
        registry.save(path)
    except OSError as exc:
        raise CliError(f"{path}: cannot write ({exc.strerror})") from None


def registry_add(args: argparse.Namespace) -> int:
    key = public_key(args.public_key, "PUBLIC_KEY")
    registry = load_registry(args.path, "PATH", missing_ok=True)
    try:
        registry.add(args.key_id, key)
    except ValueError as exc:
        raise CliError(f"cannot add key id {args.key_id!r}: {exc}") from None
    _save(registry, args.path)
    _done(args, f"{args.key_id} added to {args.path} ({len(registry)} active keys)")
    return EXIT_OK


def registry_revoke(args: argparse.Namespace) -> int:
    registry = load_registry(args.path, "PATH")
    try:
        registry.revoke(args.key_id)
    except ValueError:
        raise CliError(
            f"{args.path}: no key id {args.key_id!r} (see `trio-session registry list {args.path}`)"
        ) from None
    _save(registry, args.path)
    _done(args, f"{args.key_id} revoked in {args.path} (restart serve to apply)")
    return EXIT_OK


def registry_list(args: argparse.Namespace) -> int:
    load_registry(args.path, "PATH")  # validates the file
    if args.json:
        emit_json(_as_json(args.path))
        return EXIT_OK
    for key_id, entry in _as_json(args.path)["keys"].items():
        state = "revoked" if entry["revoked"] else "active"
        print(f"{key_id:<24} {entry['public_key']}  {state}")
    return EXIT_OK


def _as_json(path: str) -> dict[str, Any]:
    """The registry file's keys (KeyRegistry keeps no public listing; the file is checked)."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    keys = {
        key_id: {"public_key": hex_key, "revoked": key_id in raw["revoked"]}
        for key_id, hex_key in sorted(raw["keys"].items())
    }
    return {"path": path, "keys": keys}


def _done(args: argparse.Namespace, text: str) -> None:
    if args.json:
        emit_json(_as_json(args.path))
    else:
        print(text)
