"""Where the sandbox finds the Procfile, the example mapping and its state, in any install.

The Procfile and ``mapping.example.toml`` ship inside this package (in a checkout they are
symlinks to the repository's own, which a PaaS and the docs read), so an installed oppsync runs
``oppsync run --sandbox`` and ``oppsync demo`` from any directory.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from schemas.mapping import Mapping, parse_mapping

HERE = Path(__file__).resolve().parent
#: The folder holding the ``web``, ``worker`` and ``schemas`` packages: the checkout, or
#: site-packages when installed. The stack's processes start there.
ROOT = HERE.parent.parent
PROCFILE = HERE / "Procfile"
MAPPING_EXAMPLE = HERE / "mapping.example.toml"
#: The stages and owners the simulators offer and the sandbox maps.
EXAMPLE_MAPPING: Mapping = parse_mapping(tomllib.loads(MAPPING_EXAMPLE.read_text()))
#: In a checkout, ``.oppsync`` beside the code as before; installed, in the current directory.
STATE_DIR = (ROOT if (ROOT / "pyproject.toml").exists() else Path.cwd()) / ".oppsync"
