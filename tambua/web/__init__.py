"""The adjudication pages: a supervisor's queue of open cases and a case view with the
probe beside each candidate, served by the service's own process on its own port
(``tambua serve --web-port``).

Owns: the Starlette app (``app``), what it draws (``render``), its templates and static
files. May import ``matcher/`` (cases, the engine it is handed), ``enroll/`` (the iris
review, image decoding) and ``tambua.auth``/``tambua.audit`` (the same principals, roles,
partitions and audit chain as the gRPC API); nothing imports it but ``tambua.server``.
Server-rendered HTML, a little JavaScript for keyboard shortcuts and image controls, no
build step, nothing fetched from elsewhere.
"""

from __future__ import annotations

from tambua.web.app import WebServer, create_app

__all__ = ["WebServer", "create_app"]
