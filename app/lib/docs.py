"""The `/docs` Swagger UI with its assets served by the app itself (`/docs/static/...`), not from a CDN:
the docs work offline and behind egress-restricted networks.

The files come from the `openapi-ui-bundles` package (Swagger UI 5, which renders OpenAPI 3.1)."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import swagger_ui

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/static"
ASSETS_DIR = Path(swagger_ui.static_path)


def swagger_render_plugin() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def swagger_assets_router() -> Router:
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS_DIR],
        name="docs-static",
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86400, public=True),
    )
