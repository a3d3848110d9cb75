"""Who may call a resource: each resource class says it in ``auth`` (default ``Access.USER``);
api.middleware.Authenticate enforces it."""

from __future__ import annotations

import enum


class Access(enum.Enum):
    PUBLIC = "public"  # anyone, no credentials looked at
    USER = "user"  # a person: session cookie or a configured authenticator
    SCHEDULER = "scheduler"  # a cluster's scheduler: its cluster token (the resource checks it)
    USER_OR_SCHEDULER = "user_or_scheduler"  # either; a scheduler's request has no user
