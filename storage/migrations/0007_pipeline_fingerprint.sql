-- The pipeline fingerprint is now derived from the typed stage configuration
-- (tasks.config.PipelineConfig.fingerprint): every field of the chunking and parsing
-- configurations, by name. Documents indexed under the old spelling
-- ("parse-v1;chunk=chars:1000/200") keep their place: the same settings, newly spelled, so an
-- unchanged document is still found unchanged.
UPDATE documents
SET pipeline = regexp_replace(
    pipeline,
    '^parse-v([0-9]+);chunk=([a-z]+):([0-9]+)/([0-9]+)$',
    'chunk:overlap=\4,size=\3,unit=\2;parse:version=\1'
)
WHERE pipeline ~ '^parse-v[0-9]+;chunk=[a-z]+:[0-9]+/[0-9]+$';
