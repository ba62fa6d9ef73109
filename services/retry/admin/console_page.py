"""The console page: static files shipped inside the package (package data)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web

from sendqueue.shared.errors import ConfigError

#: Where the console's files are installed, next to this module.
CONSOLE_DIR = Path(str(resources.files(__package__ or __name__) / "console"))
_FILES = ("index.html", "console.js", "console.css")


def check_console_files() -> None:
    """A broken install stops the retry service at start-up, saying what is missing."""
    missing = [name for name in _FILES if not (CONSOLE_DIR / name).is_file()]
    if missing:
        raise ConfigError(
            f"the console's files are missing from this installation ({', '.join(missing)}"
            f" not in {CONSOLE_DIR}): reinstall sendqueue from its package"
        )


def add_console(app: web.Application) -> None:
    """Serve the console at / and /console/."""
    check_console_files()

    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")

    app.router.add_get("/", page)
    app.router.add_get("/console", page)
    app.router.add_static("/console/", CONSOLE_DIR)
