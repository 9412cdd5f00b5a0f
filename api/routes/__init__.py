"""The API's routers; each module is one resource."""
