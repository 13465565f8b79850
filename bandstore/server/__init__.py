"""``bandstore serve``: an HTTP model server over one Store (extra ``[serve]``: starlette,
uvicorn, prometheus-client, safetensors). See :mod:`bandstore.server.app`."""

from bandstore.server.app import ServerOptions, create_app
from bandstore.server.backend import Backend, StoreBackend, TableSpec

__all__ = ["Backend", "ServerOptions", "StoreBackend", "TableSpec", "create_app"]
