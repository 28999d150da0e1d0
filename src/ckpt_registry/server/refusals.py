"""Error answers declared beside the rule that gives them, with the routes it applies to: the OpenAPI
document lists, for each operation, the refusals whose rule applies to its route (`openapi.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

# Does the rule apply to this route when called with this method?
Applies = Callable[[APIRoute, str], bool]


def every_route(_route: APIRoute, _method: str) -> bool:
    """A layer in front of the routing (or of the app): it refuses before any route is chosen."""
    return True


@dataclass(frozen=True)
class Refusal:
    """An error answer `status`, given when `cause`, on the routes `applies` accepts.

    The body is `{"detail": "<message>"}` (`ErrorDetail`), or the validation shape with `validation`;
    `headers` names the headers it always carries (`Retry-After`, `WWW-Authenticate`).
    """

    status: int
    cause: str
    applies: Applies = every_route
    headers: tuple[str, ...] = ()
    validation: bool = False


def depends_on(route: APIRoute, call: Callable[..., object]) -> bool:
    """True when the route's dependencies (at any depth) include `call`."""

    def walk(dependant: Dependant) -> bool:
        return dependant.call is call or any(walk(sub) for sub in dependant.dependencies)

    return walk(route.dependant)
