"""
cavra's HTTP API: a Falcon app factory and the waitress runner that serves it.
"""

from __future__ import annotations

from cavra_server.app import create_app
from cavra_server.runner import serve

__all__ = ["create_app", "serve"]
