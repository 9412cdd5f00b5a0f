"""The service layer: what the API, the CLI and the notebook functions call.

One module per concern, each a set of plain functions over the flows, the queue backends and
the repositories below:

- ``ingest``: ingest files, folders and URIs now, in this process; sweep a prefix
- ``search``: rank a collection's chunks for a query
- ``documents``: list, read and delete documents; status by collection
- ``uploads``: documents arriving through the API (streamed uploads, URIs, merges) as jobs
- ``jobs``: jobs as callers see them: state, progress, cancel, retry
- ``collections``: the tenant's collections by name
- ``keys``: API keys and the request rate of each
- ``stores``: register, list and presign object-store locations
- ``health``, ``metrics``: readiness and the numbers behind ``/metrics``
- ``evaluation``: retrieval quality on a BEIR dataset
- ``runtime``: the process-wide set-up each front door does once
"""
