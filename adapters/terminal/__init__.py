"""The `concordia join` terminal client: `client` is the seat in a party, `link` the invite
link and the connection to the host it names."""

from adapters.terminal.client import (
    EXIT_NOT_JOINED,
    EXIT_OK,
    EXIT_UNANSWERED,
    main,
    run_join,
)
from adapters.terminal.link import InviteUrl, parse_invite_url

__all__ = [
    "EXIT_NOT_JOINED",
    "EXIT_OK",
    "EXIT_UNANSWERED",
    "InviteUrl",
    "main",
    "parse_invite_url",
    "run_join",
]
