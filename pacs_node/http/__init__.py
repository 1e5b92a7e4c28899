"""The node's HTTP layer: DICOMweb and the API (FastAPI, served by uvicorn in the node's
process over the same index and store as the DIMSE listener)."""

from .app import DICOMWEB_PREFIX, create_app
from .server import HttpServer

__all__ = ["DICOMWEB_PREFIX", "HttpServer", "create_app"]
