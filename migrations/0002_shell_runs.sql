-- Every `/concordia shell` run: who ran what, when, and how it ended (the audit trail).

CREATE TABLE shell_runs (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    command     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    exit_code   INTEGER,              -- NULL while running, or when never reaped
    outcome     TEXT CHECK (outcome IN ('exited', 'timed_out', 'cancelled', 'failed')),
    duration_s  REAL
);

CREATE INDEX shell_runs_by_party ON shell_runs (party, id);
