"""Collections: a name within a tenant, fixed to one embedding model and dimension."""

from __future__ import annotations

from dataclasses import dataclass

from ingestflow.core.errors import CollectionMismatchError, CollectionNotFoundError
from storage.db import Conn
from storage.vector_index import create_vector_index


@dataclass(frozen=True)
class Collection:
    id: int
    tenant: str
    name: str
    embedding_provider: str
    embedding_model: str
    dimension: int

    @property
    def embedder_identity(self) -> str:
        return f"{self.embedding_provider}:{self.embedding_model}"


def get_collection(conn: Conn, *, name: str, tenant: str = "default") -> Collection:
    row = conn.execute(
        "SELECT id, tenant, name, embedding_provider, embedding_model, dimension"
        " FROM collections WHERE tenant = %s AND name = %s",
        (tenant, name),
    ).fetchone()
    if row is None:
        raise CollectionNotFoundError(f"collection {name!r} does not exist")
    return Collection(**row)


def ensure_collection(
    conn: Conn,
    *,
    name: str,
    provider: str,
    model: str,
    dimension: int,
    tenant: str = "default",
) -> Collection:
    """Return the collection, creating it (with its vector index) on first use.

    A collection keeps the model it was created with; asking for another is an error, since
    vectors of different models cannot be compared.
    """
    row = conn.execute(
        "INSERT INTO collections (tenant, name, embedding_provider, embedding_model, dimension)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant, name) DO NOTHING RETURNING id",
        (tenant, name, provider, model, dimension),
    ).fetchone()
    if row is not None:
        create_vector_index(conn, collection_id=row["id"], dimension=dimension)
    coll = get_collection(conn, name=name, tenant=tenant)
    if (coll.embedding_provider, coll.embedding_model, coll.dimension) != (
        provider,
        model,
        dimension,
    ):
        raise CollectionMismatchError(
            f"collection {name!r} uses {coll.embedder_identity} ({coll.dimension} dimensions);"
            f" it cannot be ingested with {provider}:{model} ({dimension} dimensions)"
        )
    return coll


def list_collections(conn: Conn, *, tenant: str = "default") -> list[Collection]:
    rows = conn.execute(
        "SELECT id, tenant, name, embedding_provider, embedding_model, dimension"
        " FROM collections WHERE tenant = %s ORDER BY name",
        (tenant,),
    ).fetchall()
    return [Collection(**r) for r in rows]
