"""Works around a Litestar 2 routing bug: `OPTIONS` answers list every method of the path.

Litestar 2 adds an automatic OPTIONS handler to each route; its `Allow` header reads the methods of the route
object it was made for. When a later handler registers on the same path (a controller's GET and POST on
`/api/v1/sessions`), Litestar builds a new route for the path but keeps the first OPTIONS handler, still bound
to the old route, so `Allow` names only the first method (litestar-org/litestar#4169, fixed in v3). This points
each automatic OPTIONS handler at its final route once all routes exist."""

from __future__ import annotations

from litestar import Litestar
from litestar.routes import HTTPRoute

from app.lib.compat import require_tested


def fix_options_allow(app: Litestar) -> int:
    """Rebinds the automatic OPTIONS handlers of `app`; returns how many were stale."""
    require_tested("litestar", __name__)
    fixed = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.http_methods != {"OPTIONS"} or handler.fn.__name__ != "options_handler":
                continue
            for cell in handler.fn.__closure__ or ():
                bound = cell.cell_contents
                if isinstance(bound, HTTPRoute) and bound is not route:
                    cell.cell_contents = route
                    fixed += 1
    return fixed
