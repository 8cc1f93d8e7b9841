-- Claude's questions to the group (and its plans), prompts that ask for a plan first, and
-- the images attached to prompts.

CREATE TABLE questions (
    id             INTEGER PRIMARY KEY,
    party          TEXT NOT NULL REFERENCES parties(name),
    batch_id       INTEGER REFERENCES batches(id),
    kind           TEXT NOT NULL CHECK (kind IN ('choice', 'plan')),
    text           TEXT NOT NULL,
    options_json   TEXT NOT NULL,
    asked_at       TEXT NOT NULL,
    -- NULL while it waits; the answer and who gave it once it is settled
    outcome        TEXT CHECK (outcome IN ('answered', 'timed_out', 'cancelled', 'abandoned')),
    answer         TEXT,
    answered_by    TEXT,               -- JSON: {"platform", "user_id", "name"}
    closed_at      TEXT
);
CREATE INDEX questions_open ON questions (party) WHERE outcome IS NULL;

ALTER TABLE prompts ADD COLUMN plan INTEGER NOT NULL DEFAULT 0;

CREATE TABLE prompt_images (
    id          INTEGER PRIMARY KEY,
    prompt_id   INTEGER NOT NULL REFERENCES prompts(id),
    name        TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX prompt_images_by_prompt ON prompt_images (prompt_id);
