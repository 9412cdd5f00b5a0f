-- Fan-out: a large run's documents split into parts that any worker of the pool may take.
-- The run that split them (the parent) keeps a row while it lives; each part is claimed by
-- one run at a time, which keeps its heartbeat fresh, and holds the part's outcomes once
-- done. A part whose heartbeat went stale (its worker died) is claimed again.
CREATE TABLE fan_out_runs (
    id            text PRIMARY KEY,          -- the parent's flow run id
    collection_id integer NOT NULL,
    dimension     integer NOT NULL,          -- the collection's vectors
    tenant        text NOT NULL,
    force         boolean NOT NULL DEFAULT false,
    metadata      jsonb NOT NULL DEFAULT '{}',
    chunking      jsonb,                     -- the run's chunking override, if any
    job_ids       text[] NOT NULL DEFAULT '{}',
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fan_out_parts (
    run_id        text NOT NULL REFERENCES fan_out_runs (id) ON DELETE CASCADE,
    part          integer NOT NULL,
    sources       jsonb NOT NULL,            -- [[source, job id or null], ...]
    state         text NOT NULL DEFAULT 'waiting'
                  CHECK (state IN ('waiting', 'running', 'done', 'failed')),
    claim         uuid,                      -- the current claimant's token
    claimed_by    text,                      -- its flow run
    attempts      integer NOT NULL DEFAULT 0,
    heartbeat_at  timestamptz,
    error         text,
    outcomes      jsonb,                     -- once done: one per source, in order
    PRIMARY KEY (run_id, part)
);
