"""Is the Hugging Face hub reachable? Asked before any hub load.

(The hub of *adapters* loaded in the kernel is another thing: `llm_magics.adapters.session`.)

Offline, transformers and datasets retry for ~25 s before failing; a user who
mistyped a name deserves an answer at once.
"""
from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlparse

_checked: tuple[float, bool] | None = None


def reachable(timeout: float = 3.0) -> bool:
    """A cheap connection test, remembered for a minute."""
    global _checked
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    if _checked and time.monotonic() - _checked[0] < 60:
        return _checked[1]
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        ok = True
    except OSError:
        ok = False
    _checked = (time.monotonic(), ok)
    return ok
