-- The counters and histograms of /metrics: jobs and stage runs, counted as they happen by the
-- processes doing the work, so every API replica's scrape reads the same numbers and no
-- restart loses them. Cumulative, as Prometheus counters are: deleting or expiring a job
-- takes nothing back. UNLOGGED: updated on every stage run without WAL traffic; a database
-- crash empties them, which Prometheus reads as a counter reset.
DROP TABLE stage_runs;

CREATE UNLOGGED TABLE metric_counters (
    name    text NOT NULL,
    labels  text[] NOT NULL,  -- the values of the metric's labels, in its label order
    value   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (name, labels)
);

CREATE UNLOGGED TABLE metric_histograms (
    name     text NOT NULL,
    labels   text[] NOT NULL,
    buckets  bigint[] NOT NULL,  -- observations at or below each of the metric's bounds
    count    bigint NOT NULL,
    sum      double precision NOT NULL,
    PRIMARY KEY (name, labels)
);
