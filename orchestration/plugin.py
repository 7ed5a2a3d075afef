"""The Lamina page inside the Airflow UI (an Airflow 3 UI plugin).

``LaminaPlugin`` mounts a FastAPI app under ``/lamina`` on Airflow's API
server and adds a nav entry (Browse > Lamina) that shows it in the UI's
iframe. Airflow finds it through the ``airflow.plugins`` entry point of the
``lamina`` distribution (pyproject.toml), so any Airflow that has Lamina
installed loads it; ``lamina airflow up`` needs no plugins folder.

Routes (both need a logged-in Airflow user, see ``require_user``):

* ``GET /lamina/`` -- the page, server-rendered HTML, no scripts;
* ``GET /lamina/api/summary`` -- the same data as JSON
  (``lamina.orchestration.summary.collect_summary``).

Airflow's login does not cover plugin apps: every request here is checked
against the JWT Airflow's UI and API use (the ``_token`` cookie the UI sets
at login, or ``Authorization: Bearer`` from ``POST /auth/token``), with
Airflow's own validator (``resolve_user_from_token`` -> the auth manager's
``get_user_from_token``). Anonymous: 401 (the page redirects to the login
form); forged or tampered: 403; expired: 401.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from lamina.orchestration.page import render_page
from lamina.orchestration.summary import collect_summary

#: Airflow's JWT cookie (airflow.api_fastapi.auth.managers.base_auth_manager).
TOKEN_COOKIE = "_token"
URL_PREFIX = "/lamina"


def request_token(request: Request) -> str | None:
    """The credential of a request, in Airflow's precedence: an explicit
    bearer token wins over the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(TOKEN_COOKIE)


async def require_user(request: Request) -> Any:
    """The Airflow user of this request; HTTPException 401 (no or expired
    token) or 403 (invalid token) otherwise. Validation is Airflow's own
    (signature, audience, expiry, revocation)."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    return await resolve_user_from_token(request_token(request))


AirflowUser = Annotated[Any, Depends(require_user)]


def _settings() -> Any:
    from lamina.config import load_settings

    return load_settings()


def create_app() -> FastAPI:
    app = FastAPI(title="Lamina", description="Lamina's state inside the Airflow UI",
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def _refuse(request: Request, exc: HTTPException) -> Response:
        wants_page = request.url.path.rstrip("/") in ("", URL_PREFIX) and (
            "text/html" in request.headers.get("accept", ""))
        if exc.status_code == 401 and wants_page:
            return RedirectResponse(_login_url(), status_code=302)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.get("/api/summary")
    def summary(user: AirflowUser) -> JSONResponse:
        data = collect_summary(_settings())
        data["user"] = _username(user)
        return JSONResponse(json.loads(json.dumps(data, default=str)))

    @app.get("/", response_class=HTMLResponse)
    def page(user: AirflowUser) -> HTMLResponse:
        return HTMLResponse(render_page(collect_summary(_settings()), user=_username(user)))

    return app


def _login_url() -> str:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return str(get_auth_manager().get_url_login(next_url=URL_PREFIX + "/"))
    except Exception:
        return "/"


def _username(user: Any) -> str:
    getter = getattr(user, "get_name", None)
    return str(getter() if callable(getter) else getattr(user, "username", user))


class LaminaPlugin(AirflowPlugin):
    """The Lamina page: a FastAPI app under /lamina and its nav entry."""

    name = "lamina"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Lamina"}]
    external_views = [{"name": "Lamina", "href": "lamina/", "destination": "nav",
                       "url_route": "lamina", "category": "browse"}]
