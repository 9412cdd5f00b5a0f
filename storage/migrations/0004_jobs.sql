-- The service: which job last took a document, why it failed, what embedding it cost.
ALTER TABLE documents
    ADD COLUMN job_id            text,     -- the queue backend's job (flow run or Celery task) id
    ADD COLUMN error_code        text,     -- a stable snake_case reason next to the message
    ADD COLUMN embedding_tokens  integer NOT NULL DEFAULT 0;  -- tokens sent to the embedder
CREATE INDEX documents_job ON documents (job_id) WHERE job_id IS NOT NULL;
