"""The package's public surface: what ``__all__`` promises, and that the lazy init
keeps ``trio_session.protocol`` free of Trio."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import trio_session
import trio_session.protocol

#: The public API.  Changing it is a release-note event: update this list on purpose.
TOP_LEVEL = [
    "ENTRY_POINT_GROUP",
    "AuthenticationError",
    "Backoff",
    "Category",
    "CloseCode",
    "ConnectionLost",
    "Context",
    "ControlFlood",
    "FrameError",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "Identity",
    "InDoubt",
    "IntegrityError",
    "InvalidMessage",
    "KeyRegistry",
    "LocalProtocolError",
    "MemoryBudgetExceeded",
    "MemoryStore",
    "MessageRejected",
    "Metrics",
    "Plugin",
    "ProtocolError",
    "RateLimit",
    "RateLimited",
    "RejectCode",
    "Rejected",
    "RekeyTimeout",
    "RemoteProtocolError",
    "RestartPolicy",
    "ResumeRefused",
    "Router",
    "SequenceError",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "SessionError",
    "SessionExpired",
    "SessionReset",
    "SessionStats",
    "SessionStore",
    "SlowConsumer",
    "SqliteStore",
    "State",
    "StoreError",
    "TooManySessions",
    "Validate",
    "VenueServer",
    "VenueStats",
    "connect",
    "load_plugins",
    "serve",
]
PROTOCOL = [
    "ClientConnection",
    "CloseReceived",
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "Event",
    "HandshakeComplete",
    "HeartbeatAcked",
    "HelloReceived",
    "MessagesReceived",
    "Role",
    "SessionRecord",
    "SessionState",
    "VenueConnection",
]


def _fresh_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_all_is_pinned() -> None:
    assert trio_session.__all__ == TOP_LEVEL
    assert trio_session.protocol.__all__ == PROTOCOL


def test_every_public_name_resolves_and_reads_as_public() -> None:
    for name in TOP_LEVEL:
        obj = getattr(trio_session, name)
        if isinstance(obj, type):
            assert obj.__module__ == "trio_session", name
    for name in PROTOCOL:
        obj = getattr(trio_session.protocol, name)
        assert obj.__module__ == "trio_session.protocol", name
    assert set(TOP_LEVEL) <= set(dir(trio_session))
    assert repr(trio_session.SessionError) == "<class 'trio_session.SessionError'>"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        trio_session.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_protocol_imports_without_trio() -> None:
    out = _fresh_python(
        """
        import sys
        import trio_session.protocol as p
        conn = p.ClientConnection  # the namespace is usable
        print(sorted(m for m in ("trio", "trio_websocket") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_star_import_and_lazy_loading_in_a_fresh_interpreter() -> None:
    out = _fresh_python(
        """
        import sys
        import trio_session
        assert "trio" not in sys.modules, "the package init must stay lazy"
        namespace = {}
        exec("from trio_session import *", namespace)
        missing = [n for n in trio_session.__all__ if n not in namespace]
        print(missing, namespace["HeartbeatTimeout"].__module__)
        """
    )
    assert out.strip() == "[] trio_session"


def test_every_subpackage_is_shipped() -> None:
    """``pip install .`` (not editable) installs exactly the packages pyproject lists:
    a package directory missing from the list fails at import only after installing."""
    root = Path(trio_session.__file__).parent
    listed = set(
        tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    on_disk = {
        ".".join(init.parent.relative_to(root.parent).parts) for init in root.rglob("__init__.py")
    }
    assert on_disk == listed, (on_disk - listed, listed - on_disk)
