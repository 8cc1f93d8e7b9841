"""Concordia's core: one party, one runner, one Claude session.

Every error the core raises on purpose is a ``ConcordiaError``::

    ConcordiaError
    ├── ConfigError          bot/config.py       a setting is missing or wrong (names the key)
    ├── StoreError           bot/store.py        the SQLite store refused an operation
    ├── SessionError         bot/session.py      Claude could not be started or driven
    │   └── SessionDied      bot/session.py      the Claude process exited mid-turn
    ├── UnsafeInput          bot/safety.py       NUL bytes or invalid UTF-8 in a prompt
    ├── ShellDenied          bot/shell.py        a shell command refused before it ran
    ├── InvalidMerge         bot/merge_gemini.py Gemini's merge was unfaithful (merged locally)
    └── AdapterError         bot/ports.py        a transport failed (carries retry_after)
"""

__all__ = ["ConcordiaError"]


class ConcordiaError(Exception):
    """Root of every error Concordia raises on purpose."""
