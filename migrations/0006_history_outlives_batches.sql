-- Retention (store.keep_days) prunes finished batches, but the cost rows (kept at least a month
-- for the cost report) and the questions (the audit trail) outlive them: like approvals and the
-- outbox, they keep the batch's id as a plain number rather than a foreign key. Plus the
-- indexes the pruning queries need.

-- cost_shares points at turn_costs: both are rebuilt, and the old child table is dropped before
-- its parent so that no DROP leaves a dangling reference behind (foreign_keys is on).
CREATE TABLE turn_costs_v6 (
    id             INTEGER PRIMARY KEY,
    party          TEXT NOT NULL REFERENCES parties(name),
    batch_id       INTEGER NOT NULL,      -- the batch may since have been pruned
    attempt        INTEGER NOT NULL,
    at             TEXT NOT NULL,
    cost_usd       REAL NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL
);
INSERT INTO turn_costs_v6 (id, party, batch_id, attempt, at, cost_usd, input_tokens, output_tokens)
    SELECT id, party, batch_id, attempt, at, cost_usd, input_tokens, output_tokens FROM turn_costs;

CREATE TABLE cost_shares_v6 (
    turn_id    INTEGER NOT NULL REFERENCES turn_costs_v6(id),
    party      TEXT NOT NULL REFERENCES parties(name),
    platform   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    at         TEXT NOT NULL,             -- the turn's, repeated: the reports filter on it
    cost_usd   REAL NOT NULL
);
INSERT INTO cost_shares_v6 (turn_id, party, platform, user_id, name, at, cost_usd)
    SELECT turn_id, party, platform, user_id, name, at, cost_usd FROM cost_shares ORDER BY rowid;

DROP TABLE cost_shares;
DROP TABLE turn_costs;
-- Renaming a table rewrites the REFERENCES clauses that name it: cost_shares follows.
ALTER TABLE turn_costs_v6 RENAME TO turn_costs;
ALTER TABLE cost_shares_v6 RENAME TO cost_shares;
CREATE INDEX turn_costs_by_party ON turn_costs (party, at);
CREATE INDEX cost_shares_by_party ON cost_shares (party, at);
CREATE INDEX cost_shares_by_turn ON cost_shares (turn_id);

CREATE TABLE questions_v6 (
    id             INTEGER PRIMARY KEY,
    party          TEXT NOT NULL REFERENCES parties(name),
    batch_id       INTEGER,               -- the batch may since have been pruned
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
INSERT INTO questions_v6 (id, party, batch_id, kind, text, options_json, asked_at, outcome,
                          answer, answered_by, closed_at)
    SELECT id, party, batch_id, kind, text, options_json, asked_at, outcome, answer,
           answered_by, closed_at FROM questions;
DROP TABLE questions;
ALTER TABLE questions_v6 RENAME TO questions;
CREATE INDEX questions_open ON questions (party) WHERE outcome IS NULL;

-- What pruning (and finishing a batch, and a batch's images) look up by batch.
CREATE INDEX prompts_by_batch ON prompts (batch_id);
CREATE INDEX outbox_by_batch ON outbox (batch_id);
CREATE INDEX batches_finished ON batches (finished_at) WHERE state IN ('done', 'failed');
