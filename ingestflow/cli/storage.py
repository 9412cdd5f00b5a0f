"""``ingestflow storage``: register a bucket as a source, list a prefix, presign an upload.

A thin adapter over ``ingestflow.service``.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

import typer

from ingestflow.cli.support import console, err, one_line_errors
from ingestflow.service import stores

storage_app = typer.Typer(
    help="Object stores: register a bucket, list a prefix, presign an upload.",
    no_args_is_help=True,
)


@storage_app.command("add")
@one_line_errors
def add(
    name: Annotated[str, typer.Argument(help="Name of the Prefect credentials block.")],
    uri: Annotated[str, typer.Argument(help="Bucket or prefix: s3://, gs:// or az://.")],
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint (MinIO, R2 ...) for a new block.")
    ] = None,
    region: Annotated[str | None, typer.Option(help="S3 region for a new block.")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Rebuild an existing block from the environment.")
    ] = False,
) -> None:
    """Save (or reuse) credentials block NAME and check that it can list URI.

    A new block is built from the provider's variables: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), GOOGLE_APPLICATION_CREDENTIALS (a service-account
    key file), AZURE_STORAGE_CONNECTION_STRING. It is saved only if the listing works.
    """
    reg = stores.add_storage(name, uri, endpoint_url=endpoint_url, region=region, replace=replace)
    if reg.block is None:
        console.print(f"no credentials block needed: {reg.source}", markup=False)
    elif reg.saved:
        console.print(f"saved Prefect block {reg.block} from {reg.source}", markup=False)
    else:
        console.print(f"using {reg.source}", markup=False)
    more = "+" if reg.listed >= reg.page_size else ""
    console.print(f"listed {reg.uri}: {reg.listed}{more} objects on the first page", markup=False)
    if reg.block is not None:
        console.print(f"to use it: {reg.setting}={reg.block}", markup=False)


@storage_app.command("ls")
@one_line_errors
def ls(
    uri: Annotated[str, typer.Argument(help="Prefix: s3://, gs://, az:// or a folder.")],
    limit: Annotated[int, typer.Option(min=1, help="Most objects to show.")] = 100,
) -> None:
    """List objects under URI: uri, size in bytes, modified time (UTC), tab-separated."""
    shown = 0
    for info in stores.list_storage(uri, limit=limit + 1):
        if shown == limit:
            err.print(f"(stopped at --limit {limit}; more objects follow)", markup=False)
            break
        modified = info.modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        typer.echo(f"{info.uri}\t{info.size}\t{modified}")
        shown += 1
    if not shown:
        err.print(f"no objects under {uri}", markup=False)


@storage_app.command("presign")
@one_line_errors
def presign(
    uri: Annotated[str, typer.Argument(help="The object to upload: s3://bucket/key.")],
    expires: Annotated[int, typer.Option(min=1, max=604800, help="Seconds the URL works.")] = 3600,
) -> None:
    """Print a presigned PUT URL for URI (S3-compatible stores only).

    Upload with e.g. `curl -T report.pdf "$URL"`; the next sweep of the prefix ingests it.
    """
    typer.echo(stores.presign_upload(uri, expires=expires))
