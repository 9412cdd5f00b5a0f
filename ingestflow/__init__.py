"""ingestflow: document ingestion for RAG on Prefect 3 and Postgres/pgvector.

``from ingestflow import ingest, search, status`` for notebooks and scripts; the flows
themselves are in ``flows``. The package is layered (README, Architecture): ``core`` is the
floor, ``service`` what every front door calls, ``cli`` the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ingest", "search", "status"]

if TYPE_CHECKING:
    from ingestflow.service.notebook import ingest, search, status


def __getattr__(name: str) -> Any:
    # Lazy, so importing the floor (settings, types) does not pull in Prefect and the database.
    if name in __all__:
        from ingestflow.service import notebook

        return getattr(notebook, name)
    raise AttributeError(name)
