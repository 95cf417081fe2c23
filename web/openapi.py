"""``GET /openapi.yaml``: the OpenAPI 3 description of the receiver, served as written."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)
SPEC_PATH = Path(__file__).with_name("openapi.yaml")


@lru_cache(maxsize=1)
def spec_text() -> str:
    """The description, read once per process (it ships with the package)."""
    return SPEC_PATH.read_text(encoding="utf-8")


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    return Response(spec_text(), mimetype="application/yaml")
