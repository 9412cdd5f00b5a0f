"""``ingestflow keys``: create, revoke and list the HTTP API's keys.

A key is printed once, when it is created; only its sha256 is stored. ``list`` shows ids,
tenants, names and dates, never a key or a hash.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ingestflow.cli.support import console, err, one_line_errors
from ingestflow.service import keys

keys_app = typer.Typer(
    help="API keys for the HTTP API, each bound to a tenant.", no_args_is_help=True
)


@keys_app.command("create")
@one_line_errors
def create(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option("--name", "-n", help="A label, e.g. who uses it.")] = "",
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="tenant (the default), or operator: may also read workers, queues and"
            " every tenant's job statistics (/v1/ops/...).",
        ),
    ] = "tenant",
) -> None:
    """Create a key and print it once: store it now, it cannot be shown again."""
    new = keys.create_key(tenant=tenant, name=name, role=role)
    err.print(
        f"created key {new.record.id} for tenant {tenant!r} ({role}); it is shown only once:",
        markup=False,
    )
    console.print(new.secret, markup=False, highlight=False)


@keys_app.command("revoke")
@one_line_errors
def revoke(key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    record = keys.revoke_key(key_id)
    if record is None:
        raise ValueError(f"no key has id {key_id}")
    console.print(f"revoked key {record.id} (tenant {record.tenant!r})", markup=False)


@keys_app.command("list")
@one_line_errors
def list_(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's.")
    ] = None,
) -> None:
    """The keys: id, tenant, name, created, revoked. Never the keys themselves."""
    table = Table("id", "tenant", "name", "role", "created", "revoked")
    for k in keys.list_keys(tenant=tenant):
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else ""
        created = k.created_at.isoformat(timespec="seconds")
        table.add_row(str(k.id), k.tenant, k.name, k.role, created, revoked)
    console.print(table)
