"""Long-term identities (Ed25519 key pairs) and the venue's trust store.

Why Ed25519 key pairs instead of API secrets: both ends prove who they are by
signing the handshake transcript, so nothing reusable ever crosses the wire and
the venue stores only public keys (docs/security.md).  A participant's key
is registered with the venue under a short ``key_id`` (as Ed25519 API keys are
at Binance and Deribit); the venue looks the key up by that id before doing any
crypto, and revoking the id must end live sessions, hence revocation listeners.

Secrets discipline: an :class:`Identity` never shows its seed in ``repr``,
``str``, error messages or pickles.  The only way the seed leaves the object is
:meth:`Identity.save`, which writes a file only its owner can read.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable
from typing import Any, NoReturn, final

import nacl.signing

from ._errors import AuthenticationError, CloseCode

__all__ = ["Identity", "KeyRegistry", "key_id_for"]

logger = logging.getLogger(__name__)

#: Raw Ed25519 public keys, seeds and detached signatures have fixed sizes.
PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64
#: Bounds of a key id (printable ASCII without spaces).
MAX_KEY_ID_LENGTH = 128

_IDENTITY_FORMAT = "trio_session.identity"
_REGISTRY_FORMAT = "trio_session.registry"
_FILE_VERSION = 1
#: Files are small; refusing big ones keeps a wrong path from eating memory.
_MAX_IDENTITY_FILE_SIZE = 64 * 1024
_MAX_REGISTRY_FILE_SIZE = 64 * 2**20

StrPath = str | os.PathLike[str]
#: Raw key material may come in any of the builtin bytes-like types; it is copied to bytes.
BytesLike = bytes | bytearray | memoryview


def key_id_for(public_key: BytesLike) -> str:
    """Derive the default key id of an Ed25519 public key.

    Why a hash and not the key itself: ids appear in logs, configs and the
    handshake, so a short fixed-size name (32 hex characters) is handier, and
    the personalisation string keeps it from colliding with any other use of
    BLAKE2b over the same key.

    Raises:
        TypeError: ``public_key`` is not bytes.
        ValueError: ``public_key`` is not 32 bytes long.
    """
    pk = _public_key_bytes(public_key, "public_key")
    return hashlib.blake2b(pk, digest_size=16, person=b"tsess/v1 keyid").hexdigest()


def _public_key_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be {PUBLIC_KEY_SIZE} raw bytes, got {type(value).__name__}")
    data = bytes(value)
    if len(data) != PUBLIC_KEY_SIZE:
        raise ValueError(f"{what} must be {PUBLIC_KEY_SIZE} bytes, got {len(data)}")
    return data


def _key_id_problem(key_id: object) -> str | None:
    """Why ``key_id`` is not a valid key id, or None if it is.

    The reason never quotes the value: ids come from files and the wire.
    """
    if not isinstance(key_id, str):
        return f"must be a str, got {type(key_id).__name__}"
    if not 1 <= len(key_id) <= MAX_KEY_ID_LENGTH:
        return f"must be 1..{MAX_KEY_ID_LENGTH} characters, got {len(key_id)}"
    if not all("!" <= ch <= "~" for ch in key_id):
        return "must be printable ASCII without spaces"
    return None


def _check_key_id(key_id: object) -> str:
    problem = _key_id_problem(key_id)
    if problem is not None:
        if isinstance(key_id, str):
            raise ValueError(f"key_id {problem}")
        raise TypeError(f"key_id {problem}")
    assert isinstance(key_id, str)
    return key_id


# --------------------------------------------------------------------------- files


def _atomic_write(path: StrPath, data: bytes, *, mode: int, force_mode: bool) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half.

    The temporary file is created next to the target (``os.replace`` is only
    atomic within one filesystem) with ``O_EXCL`` so it cannot be a planted
    file or symlink, and with ``mode`` from the start so a secret is never
    briefly world-readable.  ``force_mode`` also applies ``fchmod`` because the
    umask could otherwise leave the file with fewer bits than intended.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            if force_mode and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; best effort (not possible on Windows).
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _read_json_object(
    path: StrPath, *, kind: str, max_size: int, private: bool
) -> tuple[str, dict[str, Any]]:
    """Read a small JSON object file; every failure is a one-line ValueError.

    Messages name the file and the problem but never quote file content, and
    the original exception is suppressed (``from None``): a decoder's message
    can contain bytes of the file, which for an identity would be the seed.
    OSError (missing file, no permission) propagates unchanged: it carries only
    the path.
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{kind} file {name!r} is not a regular file")
        if private and os.name == "posix" and st.st_mode & 0o077:
            raise ValueError(
                f"{kind} file {name!r}: permissions too open, chmod 600 "
                f"(mode is {stat.S_IMODE(st.st_mode):#o})"
            )
        if st.st_size > max_size:
            raise ValueError(f"{kind} file {name!r} is too large ({st.st_size} bytes)")
        chunks: list[bytes] = []
        remaining = max_size + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > max_size:
        raise ValueError(f"{kind} file {name!r} is too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"{kind} file {name!r} is not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{kind} file {name!r} must contain a JSON object")
    return name, doc


def _check_header(name: str, doc: dict[str, Any], *, kind: str, fmt: str) -> None:
    if doc.get("format") != fmt:
        raise ValueError(f"{kind} file {name!r}: 'format' must be {fmt!r}")
    version = doc.get("version")
    if type(version) is not int or version != _FILE_VERSION:
        raise ValueError(f"{kind} file {name!r}: unsupported 'version' (expected {_FILE_VERSION})")


def _hex_field(name: str, kind: str, field: str, value: object, size: int) -> bytes:
    # Never echo ``value``: for an identity it may be the seed.
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"{kind} file {name!r}: {field!r} must be {2 * size} hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{kind} file {name!r}: {field!r} is not valid hex") from None


# --------------------------------------------------------------------------- Identity


@final
class Identity:
    """An Ed25519 key pair with a key id: who a venue or a participant is.

    Create one with :meth:`generate`, :meth:`from_seed` or :meth:`load`.  The
    private key stays inside: ``repr`` shows only the key id and public key,
    pickling is refused, and equality is object identity, so secrets cannot
    leak through logs, queues or comparisons by accident.  Share
    :attr:`public_key` and :attr:`key_id` with the peer; keep the key file.
    """

    __slots__ = ("__weakref__", "_key_id", "_public_key", "_signing_key")

    _signing_key: nacl.signing.SigningKey
    _public_key: bytes
    _key_id: str

    def __init__(self, signing_key: nacl.signing.SigningKey, *, key_id: str | None = None) -> None:
        """Wrap a PyNaCl signing key.  Prefer :meth:`generate`, :meth:`from_seed`, :meth:`load`."""
        if not isinstance(signing_key, nacl.signing.SigningKey):
            raise TypeError(
                f"signing_key must be a nacl.signing.SigningKey, got {type(signing_key).__name__}"
            )
        public_key = bytes(signing_key.verify_key)
        self._signing_key = signing_key
        self._public_key = public_key
        self._key_id = key_id_for(public_key) if key_id is None else _check_key_id(key_id)

    @classmethod
    def generate(cls, *, key_id: str | None = None) -> Identity:
        """Make a new random identity (seed from the OS CSPRNG via libsodium)."""
        return cls(nacl.signing.SigningKey.generate(), key_id=key_id)

    @classmethod
    def from_seed(cls, seed: BytesLike, *, key_id: str | None = None) -> Identity:
        """Rebuild an identity from its 32-byte Ed25519 seed (deterministic).

        Raises:
            TypeError: ``seed`` is not bytes.
            ValueError: ``seed`` is not 32 bytes long.
        """
        if not isinstance(seed, (bytes, bytearray, memoryview)):
            raise TypeError(f"seed must be {SEED_SIZE} bytes, got {type(seed).__name__}")
        if len(seed) != SEED_SIZE:
            raise ValueError(f"seed must be {SEED_SIZE} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(bytes(seed)), key_id=key_id)

    @property
    def key_id(self) -> str:
        """The id a venue registers this key under; by default derived from the public key."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key; safe to share."""
        return self._public_key

    @property
    def public_key_hex(self) -> str:
        """The public key as 64 lowercase hex characters."""
        return self._public_key.hex()

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``data``."""
        return self._signing_key.sign(bytes(data)).signature

    def save(self, path: StrPath) -> None:
        """Write this identity, seed included, to ``path`` (mode 0600, atomically).

        The file is JSON: ``{"format": "trio_session.identity", "version": 1,
        "key_id": ..., "public_key": hex, "seed": hex}``.  An existing file is
        replaced in one step, so a crash never leaves a truncated key file.
        """
        doc = {
            "format": _IDENTITY_FORMAT,
            "version": _FILE_VERSION,
            "key_id": self._key_id,
            "public_key": self._public_key.hex(),
            "seed": bytes(self._signing_key).hex(),
        }
        data = (json.dumps(doc, indent=2) + "\n").encode("ascii")
        _atomic_write(path, data, mode=0o600, force_mode=True)

    @classmethod
    def load(cls, path: StrPath) -> Identity:
        """Read an identity written by :meth:`save`.

        Raises:
            ValueError: the file is malformed, its public key does not match its
                seed, or (on POSIX) group or others may access it.  The message
                names the file and never contains the seed.
            OSError: the file cannot be opened.
        """
        kind = "identity"
        name, doc = _read_json_object(
            path, kind=kind, max_size=_MAX_IDENTITY_FILE_SIZE, private=True
        )
        _check_header(name, doc, kind=kind, fmt=_IDENTITY_FORMAT)
        expected = {"format", "version", "key_id", "public_key", "seed"}
        missing = sorted(expected - doc.keys())
        if missing:
            raise ValueError(f"{kind} file {name!r}: missing field(s) {', '.join(missing)}")
        if doc.keys() - expected:
            # Names of unexpected fields are not echoed: they could be pasted secrets.
            raise ValueError(f"{kind} file {name!r}: unexpected field(s)")
        problem = _key_id_problem(doc["key_id"])
        if problem is not None:
            raise ValueError(f"{kind} file {name!r}: 'key_id' {problem}")
        public_key = _hex_field(name, kind, "public_key", doc["public_key"], PUBLIC_KEY_SIZE)
        seed = _hex_field(name, kind, "seed", doc["seed"], SEED_SIZE)
        identity = cls(nacl.signing.SigningKey(seed), key_id=doc["key_id"])
        if not hmac.compare_digest(identity.public_key, public_key):
            raise ValueError(f"{kind} file {name!r}: 'public_key' does not match the seed")
        return identity

    def __repr__(self) -> str:
        return f"<trio_session.Identity key_id={self._key_id!r} public_key={self.public_key_hex}>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickles travel (queues, caches, crash dumps): a secret key must not
        # ride along by accident.  Use save()/load() deliberately instead.
        raise TypeError("Identity cannot be pickled: it holds a private key; use save()/load()")

    def __copy__(self) -> Identity:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> Identity:
        return self  # immutable; and a copy would duplicate the secret for nothing


# --------------------------------------------------------------------------- KeyRegistry

RevocationListener = Callable[[str], object]


@final
class KeyRegistry:
    """The venue's trust store: participant public keys by key id.

    A revoked key id stays in the registry, marked revoked, so that
    :meth:`lookup` can tell a revoked key (fatal, ``KEY_REVOKED``) from an
    unknown one (``UNKNOWN_KEY``), and so that the key can never be registered
    again, under that id or any other.  Revocation listeners let the runtime end
    live sessions of a revoked key at once.

    Not thread-safe: use it from the Trio thread that runs the venue.
    """

    __slots__ = ("_by_public_key", "_keys", "_listeners", "_revoked")

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._by_public_key: dict[bytes, str] = {}
        self._revoked: set[str] = set()
        # A dict as an ordered set: listeners run in registration order.
        self._listeners: dict[RevocationListener, None] = {}

    def add(self, key_id: str, public_key: BytesLike) -> None:
        """Trust ``public_key`` under ``key_id``.

        Re-adding the identical pair is a no-op.

        Raises:
            TypeError: wrong argument types.
            ValueError: ``key_id`` is not 1..128 printable ASCII characters without
                spaces; ``public_key`` is not 32 bytes; ``key_id`` is already
                bound to another key, or revoked; or ``public_key`` is already
                registered under another key id (one key, one id, so revoking
                the id really revokes the key).
        """
        key_id = _check_key_id(key_id)
        pk = _public_key_bytes(public_key, "public_key")
        if key_id in self._revoked:
            raise ValueError(f"key id {key_id!r} is revoked and cannot be added again")
        existing = self._keys.get(key_id)
        if existing is not None:
            if existing == pk:
                return
            raise ValueError(f"key id {key_id!r} is already registered with a different key")
        other = self._by_public_key.get(pk)
        if other is not None:
            state = "revoked" if other in self._revoked else "registered"
            raise ValueError(f"this public key is already {state} under key id {other!r}")
        self._keys[key_id] = pk
        self._by_public_key[pk] = key_id

    def revoke(self, key_id: str) -> None:
        """Revoke ``key_id`` for good and notify every revocation listener.

        Listeners are called synchronously, in registration order, with the key
        id.  A listener that raises is logged and the others still run.
        Revoking an already revoked id does nothing.

        Raises:
            ValueError: ``key_id`` was never added.
        """
        if key_id not in self._keys:
            raise ValueError(f"cannot revoke unknown key id {key_id!r}")
        if key_id in self._revoked:
            return
        self._revoked.add(key_id)
        for listener in list(self._listeners):
            try:
                listener(key_id)
            except Exception:
                logger.exception("revocation listener %r failed for key id %r", listener, key_id)

    def lookup(self, key_id: str) -> bytes:
        """Return the active public key registered under ``key_id``.

        Raises:
            AuthenticationError: with ``code=CloseCode.UNKNOWN_KEY`` if the id
                was never added, ``code=CloseCode.KEY_REVOKED`` if it was revoked.
        """
        pk = self._keys.get(key_id) if isinstance(key_id, str) else None
        if pk is None:
            raise AuthenticationError("unknown key id", code=CloseCode.UNKNOWN_KEY)
        if key_id in self._revoked:
            raise AuthenticationError("key id revoked", code=CloseCode.KEY_REVOKED)
        return pk

    def is_revoked(self, key_id: str) -> bool:
        """True if ``key_id`` was added and then revoked (False if unknown)."""
        return key_id in self._revoked

    def __contains__(self, key_id: object) -> bool:
        """True only for active (added and not revoked) key ids."""
        return isinstance(key_id, str) and key_id in self._keys and key_id not in self._revoked

    def __len__(self) -> int:
        """The number of active key ids."""
        return len(self._keys) - len(self._revoked)

    def __repr__(self) -> str:
        return f"<trio_session.KeyRegistry active={len(self)} revoked={len(self._revoked)}>"

    def add_revocation_listener(self, fn: RevocationListener) -> None:
        """Call ``fn(key_id)`` whenever a key id is revoked (adding twice is a no-op)."""
        if not callable(fn):
            raise TypeError("revocation listener must be callable")
        self._listeners[fn] = None

    def remove_revocation_listener(self, fn: RevocationListener) -> None:
        """Stop calling ``fn``.

        Raises:
            ValueError: ``fn`` is not registered.
        """
        try:
            del self._listeners[fn]
        except KeyError:
            raise ValueError("revocation listener is not registered") from None

    def save(self, path: StrPath) -> None:
        """Write the registry (keys and revocations, not listeners) to ``path`` atomically.

        Format: ``{"format": "trio_session.registry", "version": 1,
        "keys": {key_id: public_key_hex}, "revoked": [key_id, ...]}``; revoked
        ids keep their key in ``keys`` so the key stays blocked after a reload.
        """
        doc = {
            "format": _REGISTRY_FORMAT,
            "version": _FILE_VERSION,
            "keys": {kid: pk.hex() for kid, pk in sorted(self._keys.items())},
            "revoked": sorted(self._revoked),
        }
        data = (json.dumps(doc, indent=2) + "\n").encode("ascii")
        _atomic_write(path, data, mode=0o644, force_mode=False)

    @classmethod
    def load(cls, path: StrPath) -> KeyRegistry:
        """Read a registry written by :meth:`save`.

        Raises:
            ValueError: the file is malformed (the message names the file and
                the problem).
            OSError: the file cannot be opened.
        """
        kind = "key registry"
        name, doc = _read_json_object(
            path, kind=kind, max_size=_MAX_REGISTRY_FILE_SIZE, private=False
        )
        _check_header(name, doc, kind=kind, fmt=_REGISTRY_FORMAT)
        expected = {"format", "version", "keys", "revoked"}
        missing = sorted(expected - doc.keys())
        if missing:
            raise ValueError(f"{kind} file {name!r}: missing field(s) {', '.join(missing)}")
        unexpected = sorted(doc.keys() - expected)
        if unexpected:
            raise ValueError(f"{kind} file {name!r}: unexpected field(s) {', '.join(unexpected)}")
        keys = doc["keys"]
        revoked = doc["revoked"]
        if not isinstance(keys, dict):
            raise ValueError(f"{kind} file {name!r}: 'keys' must be an object")
        if not isinstance(revoked, list):
            raise ValueError(f"{kind} file {name!r}: 'revoked' must be a list")
        registry = cls()
        for kid, pk_hex in keys.items():
            problem = _key_id_problem(kid)
            if problem is not None:
                raise ValueError(f"{kind} file {name!r}: a key id in 'keys' {problem}")
            pk = _hex_field(name, kind, f"keys[{kid!r}]", pk_hex, PUBLIC_KEY_SIZE)
            try:
                registry.add(kid, pk)
            except ValueError as exc:
                raise ValueError(f"{kind} file {name!r}: {exc}") from None
        for kid in revoked:
            if not isinstance(kid, str) or kid not in registry._keys:
                raise ValueError(f"{kind} file {name!r}: every 'revoked' id must appear in 'keys'")
            registry._revoked.add(kid)
        return registry
