"""Who is acting, and what their role lets them do."""

from __future__ import annotations

from dataclasses import dataclass

from registry.errors import Forbidden, InvalidInput

# Each role can do everything the roles before it can.
ROLES = ("reader", "writer", "approver", "admin")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Actor:
    """The authenticated user of a request, or of a CLI command run on the server."""

    name: str
    role: str

    def require(self, role: str) -> None:
        """Raise Forbidden unless this actor's role is at least ``role``."""
        if ROLES.index(self.role) < ROLES.index(role):
            raise Forbidden(
                f"user {self.name!r} has role {self.role!r}; this action needs {role!r} "
                "or higher (ask an admin for a token with that role)"
            )


# The single user of an open server bound to loopback, and of server-side CLI commands.
LOCAL_ADMIN = Actor(name="local", role="admin")
