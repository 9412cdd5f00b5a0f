-- What a bucket sweep needs to tell new, changed and deleted objects apart.
ALTER TABLE documents
    ADD COLUMN source_etag     text,         -- etag/generation when last indexed from a listing
    ADD COLUMN source_modified timestamptz,
    ADD COLUMN last_seen_at    timestamptz;  -- when a sweep last listed the object
CREATE INDEX documents_collection_source_prefix ON documents (collection_id, source_uri text_pattern_ops);
