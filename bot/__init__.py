"""Concordia's core: parties of people, one runner and one agent session each.

Every error the core raises on purpose is a ``ConcordiaError``::

    ConcordiaError
    ├── ConfigError          bot/config.py       a setting is missing or wrong (names the key)
    ├── StoreError           bot/store.py        the SQLite store refused an operation
    │   └── StaleSources     bot/store.py        a merged prompt stopped being pending
    ├── SessionError         bot/agent.py        the agent could not be started or driven
    │   └── SessionDied      bot/agent.py        the agent's process exited mid-turn
    ├── UnsafeInput          bot/safety.py       NUL bytes or invalid UTF-8 in a prompt
    ├── ShellDenied          bot/shell.py        a shell command refused before it ran
    ├── InvalidMerge         bot/merge_gemini.py Gemini's merge was unfaithful (merged locally)
    ├── IdentityTaken        bot/party.py        a WebSocket name is a member with another role
    ├── AdapterError         bot/ports.py        a transport failed (carries retry_after)
    └── PartFailed           bot/app.py          a part of the run stopped (names the part)
"""

__all__ = ["ConcordiaError"]


class ConcordiaError(Exception):
    """Root of every error Concordia raises on purpose."""
