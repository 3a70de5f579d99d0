"""``keygen`` and ``registry``: files written right, wrong kinds of file named and fixed.

In-process (``trio_session.cli.main``): these commands do no networking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_session as ts
from trio_session.cli import main

from .cli_helpers import logging_restored


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    with logging_restored():
        yield


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trio-session: error: "), err
    assert "Traceback" not in err
    return err


def test_keygen_writes_a_private_identity_and_a_public_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "alice.key"
    assert main(["keygen", str(key), "--key-id", "alice", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    identity = ts.Identity.load(key)
    assert out == {
        "key_id": "alice",
        "public_key": identity.public_key_hex,
        "identity_file": str(key),
        "public_key_file": f"{key}.pub",
    }
    assert (key.stat().st_mode & 0o777) == 0o600
    assert Path(f"{key}.pub").read_text() == identity.public_key_hex + "\n"
    assert main(["keygen", str(key)]) == 2  # refuses to overwrite
    assert "--force" in one_error(capsys)
    assert main(["keygen", str(key), "--force"]) == 0
    assert ts.Identity.load(key).public_key != identity.public_key


def test_keygen_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "no" / "such" / "dir.key")]) == 2
    assert "does not exist" in one_error(capsys)
    assert main(["keygen", str(tmp_path / "x.key"), "--key-id", "has space"]) == 2
    assert "--key-id" in one_error(capsys)


def test_registry_add_revoke_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob = ts.Identity.generate(key_id="alice"), ts.Identity.generate(key_id="bob")
    pub = tmp_path / "alice.key.pub"
    pub.write_text(alice.public_key_hex + "\n")
    reg = tmp_path / "registry.json"
    assert main(["registry", "add", str(reg), "alice", str(pub)]) == 0  # a .pub file
    assert main(["registry", "add", str(reg), "bob", bob.public_key_hex]) == 0  # or hex
    assert "bob added" in capsys.readouterr().out
    loaded = ts.KeyRegistry.load(reg)
    assert loaded.lookup("alice") == alice.public_key and loaded.lookup("bob") == bob.public_key
    assert main(["registry", "revoke", str(reg), "bob"]) == 0
    assert main(["registry", "list", str(reg), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert listing["keys"] == {
        "alice": {"public_key": alice.public_key_hex, "revoked": False},
        "bob": {"public_key": bob.public_key_hex, "revoked": True},
    }
    # The same key under another id, a bad key, an unknown id: one line each, exit 2.
    assert main(["registry", "add", str(reg), "alias", alice.public_key_hex]) == 2
    assert "already registered under key id 'alice'" in one_error(capsys)
    assert main(["registry", "add", str(reg), "carol", "zz"]) == 2
    assert "64 hex digits" in one_error(capsys)
    assert main(["registry", "revoke", str(reg), "carol"]) == 2
    assert "no key id 'carol'" in one_error(capsys)


def test_files_of_the_wrong_kind_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venue = ts.Identity.generate(key_id="venue")
    venue.save(tmp_path / "venue.key")
    registry = ts.KeyRegistry()
    registry.save(tmp_path / "registry.json")
    (tmp_path / "notes.txt").write_text("hello\n")
    cases = [
        (["registry", "add", str(tmp_path / "venue.key"), "x", "00" * 32], "identity file"),
        (["registry", "list", str(tmp_path / "notes.txt")], "not a trio_session file"),
        (["registry", "list", str(tmp_path)], "is a directory"),
        (
            ["serve", "--identity", str(tmp_path / "notes.txt"), "--registry", "r.json"],
            "notes.txt: this is not a trio_session file, not an identity file",
        ),
    ]
    for argv, says in cases:
        assert main(argv) == 2, argv
        assert says in one_error(capsys), argv


def test_the_installed_script_and_python_dash_m_run_the_same_main() -> None:
    import importlib
    import runpy
    import tomllib

    from .cli_helpers import ROOT

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["trio-session"].partition(":")
    assert getattr(importlib.import_module(module), name) is main
    namespace = runpy.run_module("trio_session.__main__", run_name="not_main")
    assert namespace["main"] is main
