-- Concordia's durable state. The version lives in PRAGMA user_version.

CREATE TABLE parties (
    name        TEXT PRIMARY KEY,
    session_id  TEXT,                 -- Claude's conversation, resumed with --resume
    created_at  TEXT NOT NULL
);

CREATE TABLE invites (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    token_hash  TEXT NOT NULL UNIQUE, -- sha256 hex of the token; the token itself is never stored here
    role        TEXT NOT NULL CHECK (role IN ('prompter', 'host')),
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE participants (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('prompter', 'host')),
    joined_at   TEXT NOT NULL,
    left_at     TEXT,
    UNIQUE (party, platform, user_id)
);

CREATE TABLE batches (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    prompt      TEXT NOT NULL,        -- the merged instruction sent to Claude
    groups_json TEXT NOT NULL,        -- [{prompt_ids, authors, instruction}]
    state       TEXT NOT NULL CHECK (state IN ('batched', 'sent', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    status      TEXT,                 -- success | error | interrupted, once finished
    detail      TEXT,
    created_at  TEXT NOT NULL,
    finished_at TEXT
);

CREATE TABLE prompts (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    source_id   TEXT NOT NULL,        -- platform message id: a redelivery is not queued twice
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    author      TEXT NOT NULL,
    text        TEXT NOT NULL,
    thread      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'batched', 'sent', 'done', 'failed')),
    batch_id    INTEGER REFERENCES batches(id),
    created_at  TEXT NOT NULL,
    UNIQUE (party, source_id)
);
CREATE INDEX prompts_open ON prompts (party, state) WHERE state IN ('pending', 'batched', 'sent');

CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY,
    platform    TEXT NOT NULL,
    thread      TEXT NOT NULL,
    batch_id    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,     -- message number within the batch's output
    text        TEXT NOT NULL,        -- what the platform must end up showing
    ref         TEXT,                 -- the platform's message id, once posted
    shown       TEXT,                 -- what the platform confirmed showing
    UNIQUE (platform, thread, batch_id, seq)
);
CREATE INDEX outbox_unsynced ON outbox (platform) WHERE shown IS NOT text OR ref IS NULL;
