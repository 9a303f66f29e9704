"""httpx and httpcore for the rpc client, imported through
:func:`~limiquantix.protocol.import_http_stack` (without httpx's command-line
client). A module that imports :mod:`limiquantix.protocol.rpc` before ``httpx`` gets them
without it too."""

from __future__ import annotations

from .._httpstack import import_http_stack

import_http_stack()

import httpcore as httpcore
import httpx as httpx

__all__ = ["httpcore", "httpx"]
