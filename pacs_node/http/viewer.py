"""The OHIF viewer at ``/viewer``, reading the node's own DICOMweb.

``make install`` fetches the prebuilt viewer (``@ohif/app``, pinned) into
``.cache/ohif/dist``, rebased to be served under ``/viewer/`` (scripts/fetch_ohif.py);
``http.viewer_dir`` names another folder. The node serves that folder's files as they are,
except ``app-config.js``, which it writes itself: one DICOMweb data source at the page's
own origin + ``/dicomweb`` and ``routerBasename: '/viewer'``. OHIF is a single-page app, so
any other path under ``/viewer`` that is not a file answers ``index.html`` and the app's
router takes over; a missing file with a static asset's extension (``.js``, ``.css``,
``.wasm``...) is a 404, so a broken install fails loudly instead of parsing HTML as script.

With ``http.auth`` on, the page sends a browser that is not signed in to ``/login``
(:mod:`pacs_node.http.session`); its DICOMweb requests then carry the session cookie.

Without the folder every ``/viewer`` path is a 404 saying that ``make install`` fetches it;
the rest of the node runs as usual.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from .auth import role_of, token_of
from .session import login_url

__all__ = ["VIEWER_PREFIX", "app_config", "default_viewer_dir", "viewer_router"]

VIEWER_PREFIX = "/viewer"
# Extensions of files the built viewer loads itself: a missing one is a 404, never the page.
_STATIC = {".js", ".mjs", ".css", ".map", ".wasm", ".json", ".png", ".svg", ".ico", ".jpg",
           ".gif", ".woff", ".woff2", ".ttf", ".txt", ".xml", ".html", ".onnx"}
# Bundles named by content hash (app.bundle.0f6159c501addfe9.js, 0ddf166f7a343eda.wasm) never
# change under their name; everything else is revalidated.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|css|wasm)$")
_NO_CACHE = {"Cache-Control": "no-cache"}


def default_viewer_dir() -> Path:
    """Where ``make install`` puts the viewer: ``.cache/ohif/dist`` in the source tree."""
    return Path(__file__).resolve().parents[2] / ".cache" / "ohif" / "dist"


def app_config(dicomweb_prefix: str) -> str:
    """The viewer's ``app-config.js``: OHIF's settings with the node's DICOMweb, resolved
    against the page's origin in the browser (same origin, whatever host name or port the
    user reached the node by)."""
    source: dict[str, Any] = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacs-node",
        "configuration": {
            "friendlyName": "pacs-node DICOMweb",
            "name": "pacs-node",
            # qidoRoot, wadoRoot, wadoUriRoot: set below from window.location.origin.
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "rendered",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config: dict[str, Any] = {
        "name": "pacs-node",
        "routerBasename": VIEWER_PREFIX,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "pacs-node",
        "dataSources": [source],
    }
    return (
        "/* Written by pacs-node (pacs_node/http/viewer.py), not by OHIF's build. */\n"
        "(function () {\n"
        f"  var root = window.location.origin + {json.dumps(dicomweb_prefix)};\n"
        f"  var config = {json.dumps(config, indent=2)};\n"
        "  var source = config.dataSources[0].configuration;\n"
        "  source.qidoRoot = root;\n"
        "  source.wadoRoot = root;\n"
        "  source.wadoUriRoot = root;\n"
        "  window.config = config;\n"
        "})();\n"
    )


def viewer_router(viewer_dir: Path | None, *, dicomweb_prefix: str,
                  auth: bool = False) -> APIRouter:
    """Routes under :data:`VIEWER_PREFIX` serving ``viewer_dir`` (None: the default).

    ``auth`` (``http.auth``): the page itself sends a browser that is not signed in to
    ``/login`` first (its files stay public: they are OHIF's, the same for everyone)."""
    folder = (viewer_dir or default_viewer_dir()).expanduser().resolve()
    router = APIRouter(prefix=VIEWER_PREFIX, include_in_schema=False)
    config_js = app_config(dicomweb_prefix)

    def missing() -> Response:
        return PlainTextResponse(
            f"The OHIF viewer is not installed: `make install` fetches it into {folder} "
            "(http.viewer_dir names another folder).", status_code=404)

    def installed() -> bool:
        return (folder / "index.html").is_file()

    def index(request: Request) -> Response:
        if auth and role_of(request, token_of(request)) is None:
            return RedirectResponse(login_url(request), status_code=303, headers=_NO_CACHE)
        return FileResponse(folder / "index.html", media_type="text/html", headers=_NO_CACHE)

    @router.get("")
    async def root(request: Request) -> Response:
        if not installed():
            return missing()
        return RedirectResponse(VIEWER_PREFIX + "/" + (f"?{request.url.query}"
                                                       if request.url.query else ""))

    @router.get("/app-config.js")
    async def config() -> Response:
        if not installed():
            return missing()
        return Response(config_js, media_type="text/javascript", headers=_NO_CACHE)

    @router.get("/{path:path}")
    def files(path: str, request: Request) -> Response:
        if not installed():
            return missing()
        if not path:
            return index(request)
        target = (folder / path).resolve()
        if target.is_relative_to(folder) and target.is_file():
            headers = ({"Cache-Control": "public, max-age=31536000, immutable"}
                       if _HASHED.search(target.name) else _NO_CACHE)
            return FileResponse(target, headers=headers)
        if Path(path).suffix.lower() in _STATIC:
            return PlainTextResponse(f"{VIEWER_PREFIX}/{path}: no such file in the viewer",
                                     status_code=404)
        return index(request)

    return router
