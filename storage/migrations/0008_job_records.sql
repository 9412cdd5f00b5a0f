-- Jobs as records of their own: what was asked (kind, tenant, collection, priority), which
-- backend ran it and under which id, its state and progress, and when. A record outlives the
-- backend's own run (Celery results expire; a deployment can switch backends), so a job is
-- always listable and its state always known.
CREATE TABLE jobs (
    id               text PRIMARY KEY,
    tenant           text NOT NULL,
    collection       text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('ingest', 'delete')),
    backend          text NOT NULL,
    run_id           text,            -- the backend's id of its run (flow run, Celery task)
    flow_run_id      text,            -- the Prefect flow run doing the work (Celery jobs too)
    priority         text NOT NULL DEFAULT 'normal',
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN (
                         'queued', 'running', 'completed', 'completed_with_errors', 'failed',
                         'cancelled')),
    message          text,
    -- Documents: how many it was given, and (once it has ended) how many it finished and
    -- failed; while it runs they are counted from the documents that name it.
    documents_total  integer NOT NULL DEFAULT 0,
    documents_done   integer NOT NULL DEFAULT 0,
    documents_failed integer NOT NULL DEFAULT 0,
    chunks_total     integer NOT NULL DEFAULT 0,  -- known once the documents are chunked
    chunks_embedded  integer NOT NULL DEFAULT 0,
    chunks_written   integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_unfinished ON jobs (updated_at) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_run ON jobs (run_id) WHERE run_id IS NOT NULL;

-- Jobs known only from their documents (before this migration) get records; their state
-- is what their documents say, and the backend is asked no more.
INSERT INTO jobs (id, tenant, collection, kind, backend, run_id, documents_total,
                  documents_done, documents_failed, state, created_at, finished_at, updated_at)
SELECT d.job_id, c.tenant, c.name,
       CASE WHEN bool_and(d.status = 'deleted') THEN 'delete' ELSE 'ingest' END,
       'prefect', d.job_id, count(*),
       count(*) FILTER (WHERE d.status IN ('indexed', 'unchanged', 'deleted')),
       count(*) FILTER (WHERE d.status = 'failed'),
       CASE WHEN bool_or(d.status IN ('queued', 'processing')) THEN 'running'
            WHEN bool_and(d.status = 'failed') THEN 'failed'
            WHEN bool_or(d.status = 'failed') THEN 'completed_with_errors'
            ELSE 'completed' END,
       min(d.created_at),
       CASE WHEN bool_or(d.status IN ('queued', 'processing')) THEN NULL ELSE max(d.updated_at) END,
       max(d.updated_at)
FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE d.job_id IS NOT NULL
GROUP BY d.job_id, c.tenant, c.name
ON CONFLICT (id) DO NOTHING;

-- Operators: a key may see every tenant's jobs, workers and queues.
ALTER TABLE api_keys ADD COLUMN role text NOT NULL DEFAULT 'tenant'
    CHECK (role IN ('tenant', 'operator'));

-- Stage runs, for the counters and histograms of /metrics (kept as long as jobs are).
CREATE UNLOGGED TABLE stage_runs (
    id        bigserial PRIMARY KEY,
    tenant    text NOT NULL,
    stage     text NOT NULL,
    outcome   text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'retried')),
    seconds   double precision NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stage_runs_at ON stage_runs (at);

-- A document's password, sent with its upload or URI, kept only until its run has read it
-- (or until it expires): never in metadata, a flow run's parameters, a Celery message or a
-- log. UNLOGGED: not in the WAL, and a database crash drops them all.
CREATE UNLOGGED TABLE document_passwords (
    document_id  uuid PRIMARY KEY,
    password     text NOT NULL,
    expires_at   timestamptz NOT NULL
);
