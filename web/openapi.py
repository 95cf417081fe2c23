"""``GET /openapi.yaml``: the OpenAPI 3 description of the receiver.

Served as written but for ``info.version``, which is the package's (``worker.__version__``)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response

from worker import __version__

bp = Blueprint("openapi", __name__)
SPEC_PATH = Path(__file__).with_name("openapi.yaml")


@lru_cache(maxsize=1)
def spec_text() -> str:
    """The description, read once per process (it ships with the package)."""
    text = SPEC_PATH.read_text(encoding="utf-8")
    # info.version: the first "version:" indented under info (the file's own may lag).
    return re.sub(
        r"^(info:\n(?:  .*\n)*?  version: ).*$", rf'\g<1>"{__version__}"', text, count=1, flags=re.M
    )


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    return Response(spec_text(), mimetype="application/yaml")
