"""The HTTP API (FastAPI). Routes are thin adapters over ``ingestflow.service``."""

from __future__ import annotations

from fastapi import FastAPI

from ingestflow import __version__


def create_app() -> FastAPI:
    app = FastAPI(title="ingestflow", version=__version__, docs_url="/docs")

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    return app


app = create_app()
