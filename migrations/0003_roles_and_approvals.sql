-- Roles gain "approver"; invites may expire or be single-use; Claude's tool-use requests,
-- their decisions and the standing "always" rules are kept (the audit trail).

CREATE TABLE invites_v3 (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    token_hash  TEXT NOT NULL UNIQUE, -- sha256 hex of the token; the token itself is never stored here
    role        TEXT NOT NULL CHECK (role IN ('prompter', 'approver', 'host')),
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    expires_at  TEXT,                 -- NULL: never
    uses_left   INTEGER,              -- NULL: any number of joins
    standing    INTEGER NOT NULL DEFAULT 1 -- 1: the party's prompter/host token, replaced on rotate
);
INSERT INTO invites_v3 (id, party, token_hash, role, created_at, revoked_at)
    SELECT id, party, token_hash, role, created_at, revoked_at FROM invites;
DROP TABLE invites;
ALTER TABLE invites_v3 RENAME TO invites;

CREATE TABLE participants_v3 (
    id          INTEGER PRIMARY KEY,
    party       TEXT NOT NULL REFERENCES parties(name),
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('prompter', 'approver', 'host')),
    joined_at   TEXT NOT NULL,
    left_at     TEXT,
    UNIQUE (party, platform, user_id)
);
INSERT INTO participants_v3 SELECT * FROM participants;
DROP TABLE participants;
ALTER TABLE participants_v3 RENAME TO participants;

CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY,
    party        TEXT NOT NULL REFERENCES parties(name),
    batch_id     INTEGER,
    tool         TEXT NOT NULL,
    input_json   TEXT NOT NULL,       -- redacted
    rule         TEXT NOT NULL,       -- what an "always" decision would remember
    needed       INTEGER NOT NULL,
    requested_at TEXT NOT NULL,
    decided_at   TEXT,
    outcome      TEXT CHECK (outcome IN ('allowed', 'denied', 'timed_out', 'cancelled',
                                         'abandoned', 'always_rule')),
    deciders     TEXT                 -- JSON: [{"platform","user_id","name","decision"}]
);
CREATE INDEX approvals_by_party ON approvals (party, id);

CREATE TABLE approval_rules (
    party       TEXT NOT NULL REFERENCES parties(name),
    rule        TEXT NOT NULL,        -- "Bash(git status)", "Edit"
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (party, rule)
);
