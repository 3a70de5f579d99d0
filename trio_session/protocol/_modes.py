"""Frame protection modes in the handshake: the offer, the venue's choice, and the checks
(docs/protocol.md, "Mode negotiation").

The offer and the choice travel in M1 and M2, which the transcript covers, so both
machines only have to agree on the rules here; what the mode does to frames is in
``_crypto`` (``FrameMac``, ``FrameAead``).
"""

from __future__ import annotations

from typing import Final

from .._config import MODE_AEAD, MODE_MAC, MODES, SessionConfig
from .._errors import AuthenticationError, CloseCode
from ._wire import PROTOCOL_VERSION, ClientHello, ServerHello

__all__ = ["DEFAULT_OFFER", "choose_mode", "offer", "venue_choice", "verify_choice"]

#: What a participant offers when its config leaves ``modes`` to the transport and the
#: runtime did not resolve it (a transport without a URL).
DEFAULT_OFFER: Final = (MODE_MAC, MODE_AEAD)


def offer(config: SessionConfig) -> list[str]:
    """The participant's ``modes``, most preferred first."""
    return list(config.modes or DEFAULT_OFFER)


def choose_mode(offered: list[str], accepted: tuple[str, ...] | None) -> str | None:
    """The venue's choice of mode, or None when there is no common one.

    ``accepted`` in the venue's order of preference; None means "both, in the
    participant's order".  Modes unknown to us in the offer are skipped.
    """
    if accepted is None:
        return next((mode for mode in offered if mode in MODES), None)
    return next((mode for mode in accepted if mode in offered), None)


def venue_choice(hello: ClientHello, config: SessionConfig) -> str:
    """The venue's mode for ``hello``; VERSION_MISMATCH (naming both sides' lists, which
    are public) without a common version and mode."""
    mode = choose_mode(hello.modes, config.modes)
    if PROTOCOL_VERSION not in hello.ver or mode is None:
        accepted = list(config.modes or MODES)
        raise AuthenticationError(
            f"no common version/mode: offered {hello.ver}/{hello.modes}, "
            f"venue accepts {[PROTOCOL_VERSION]}/{accepted} (SessionConfig.modes)",
            code=CloseCode.VERSION_MISMATCH,
            remote=True,
        )
    return mode


def verify_choice(m2: ServerHello, offered: list[str]) -> None:
    """Participant, after the signature: the venue chose a version and mode we offered."""
    if m2.ver != PROTOCOL_VERSION or m2.mode not in offered:
        raise AuthenticationError(
            f"venue chose version/mode {m2.ver}/{m2.mode!r}, "
            f"we offered {PROTOCOL_VERSION}/{offered}",
            code=CloseCode.VERSION_MISMATCH,
            remote=True,
        )
