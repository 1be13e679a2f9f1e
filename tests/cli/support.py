"""A root Typer app holding one command module, for testing it alone."""

from __future__ import annotations

from collections.abc import Callable

import typer


def app_with(register: Callable[[typer.Typer], None]) -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def root() -> None:
        """mragw (test root)."""

    register(app)
    return app
