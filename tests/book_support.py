"""What the book tests share: where the built book is, and what a path of the building machine looks like."""
from __future__ import annotations

import os
import re
from pathlib import Path

from tests.helpers import REPO

#: ``make book``'s output (``FAPM_BOOK_DIR`` overrides it) and the static site inside it.
BOOK = Path(os.environ.get("FAPM_BOOK_DIR", REPO / "build" / "book"))
SITE = BOOK / "site"

# Built from pieces so that this file matches no check itself.
MACHINE_PATH = re.compile("|".join(["/" + "work/", "/" + "root/", "/" + r"home/[a-z]+/", "/" + "tmp/"]))
