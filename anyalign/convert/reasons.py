"""Why a row is skipped: ``Skip(reason, detail)``, with ``reason`` one of the fixed strings below, so the
summary can count rows by reason. A skipped row is never fatal."""
from __future__ import annotations

BROKEN_JSON = "broken JSON"
NON_UTF8 = "non-UTF-8 text"
DUPLICATE = "duplicate key"
MISMATCH = "marker/media count mismatch"
MISSING_RESPONSE = "missing chosen/rejected"
MISSING_PROMPT = "missing prompt"
MISSING_MEDIA = "missing media file"
ESCAPE = "path escapes media root"
UNREADABLE = "unreadable media"
TOO_LARGE = "image too large"
UNSUPPORTED = "unsupported media"
MALFORMED = "malformed record"
BAD_LABEL = "invalid preference label"
MARKER_IN_RESPONSE = "marker in response"
BAD_SOURCE = "unreadable source file"


class Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail
