"""Type variables shared by the typed API (``Session[M]``, ``Router[M]``, ...).

Why a module: the message type ``M`` defaults to ``Any`` for type checkers
(PEP 696), so that a bare ``Session`` annotation keeps working under
``mypy --strict``; Python 3.11's ``typing.TypeVar`` has no ``default=``, and
``typing_extensions`` is not a runtime dependency, so the default exists only
for the type checker.  ``TypeForm`` (PEP 747) lets ``messages=Order | Fill``
carry its union into ``Session[Order | Fill]``.  Nothing here costs anything at
run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["M", "T", "TypeForm"]

if TYPE_CHECKING:
    from typing_extensions import TypeForm, TypeVar

    #: The application message type of a session (``bytes`` without ``messages=``).
    M = TypeVar("M", default=Any)
    #: One message type handled by a route (a default only because it follows M).
    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    M = TypeVar("M")
    T = TypeVar("T")

    class TypeForm:  # only ever subscripted in annotations, which are not evaluated
        def __class_getitem__(cls, item: Any) -> Any:
            return cls
