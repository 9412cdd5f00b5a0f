-- Collections, documents, chunks and the embedding cache.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE collections (
    id                  serial PRIMARY KEY,
    tenant              text NOT NULL DEFAULT 'default',
    name                text NOT NULL,
    embedding_provider  text NOT NULL,
    embedding_model     text NOT NULL,
    dimension           integer NOT NULL CHECK (dimension > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);

CREATE TABLE documents (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    collection_id  integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    source_uri     text NOT NULL,
    sha256         text,
    pipeline       text,  -- parser and chunking settings the chunks were made with
    size_bytes     bigint,
    media_type     text,
    status         text NOT NULL CHECK (status IN
                       ('queued', 'processing', 'indexed', 'unchanged', 'failed', 'deleted')),
    error          text,
    attempts       integer NOT NULL DEFAULT 0,
    chunk_count    integer NOT NULL DEFAULT 0,
    flow_run_id    text,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    timings        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    indexed_at     timestamptz,
    UNIQUE (collection_id, source_uri)
);
CREATE INDEX documents_collection_sha256 ON documents (collection_id, sha256);
CREATE INDEX documents_collection_status ON documents (collection_id, status, updated_at);

-- Vectors are stored untyped so collections can differ in dimension; each collection gets a
-- partial HNSW index on embedding::vector(<its dimension>) (see storage/collections.py).
CREATE TABLE chunks (
    id             bigserial PRIMARY KEY,
    document_id    uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection_id  integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    ordinal        integer NOT NULL,
    content        text NOT NULL,
    content_hash   text NOT NULL,
    provenance     jsonb NOT NULL DEFAULT '{}'::jsonb,
    embedding      vector NOT NULL,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_collection ON chunks (collection_id);

CREATE TABLE embedding_cache (
    model         text NOT NULL,
    content_hash  text NOT NULL,
    embedding     vector NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, content_hash)
);
