-- What each turn cost, as the agent reported it, and each author's share of it.

CREATE TABLE turn_costs (
    id             INTEGER PRIMARY KEY,
    party          TEXT NOT NULL REFERENCES parties(name),
    batch_id       INTEGER NOT NULL REFERENCES batches(id),
    attempt        INTEGER NOT NULL,
    at             TEXT NOT NULL,
    cost_usd       REAL NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL
);

CREATE TABLE cost_shares (
    turn_id    INTEGER NOT NULL REFERENCES turn_costs(id),
    party      TEXT NOT NULL REFERENCES parties(name),
    platform   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    at         TEXT NOT NULL,             -- the turn's, repeated: the reports filter on it
    cost_usd   REAL NOT NULL
);

CREATE INDEX turn_costs_by_party ON turn_costs (party, at);
CREATE INDEX cost_shares_by_party ON cost_shares (party, at);
