"""The route table: ``(method, path template) -> Route``, with 404/405 derived from it.

Static paths are a dict lookup; templates (``/v1/model/download/{id}``) are
compiled once.  ``HEAD`` is served by the ``GET`` route of the same path.
"""

import re
from typing import Dict, List, Mapping, Optional, Pattern, Sequence, Tuple

from patio.errors import MethodNotAllowed, NotFound
from patio.http.types import NO_PARAMS, Route

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The route label of requests that matched no route: one value, so junk paths
# cannot grow the metrics' label space.
UNMATCHED = "unmatched"


def _compile(template: str) -> Pattern[str]:
    pattern = ""
    last = 0
    for match in _PARAM.finditer(template):
        pattern += re.escape(template[last : match.start()]) + f"(?P<{match.group(1)}>[^/]+)"
        last = match.end()
    return re.compile("^" + pattern + re.escape(template[last:]) + "$")


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: List[Route] = list(routes)
        self._static: Dict[str, Dict[str, Route]] = {}
        self._templates: List[Tuple[Pattern[str], str, Dict[str, Route]]] = []
        by_template: Dict[str, Dict[str, Route]] = {}
        for route in self.routes:
            methods = by_template.setdefault(route.path, {})
            if route.method in methods:
                raise ValueError(f"route {route.method} {route.path} defined twice")
            methods[route.method] = route
        for template, methods in by_template.items():
            if _PARAM.search(template):
                self._templates.append((_compile(template), template, methods))
            else:
                self._static[template] = methods

    def _methods_for(self, path: str) -> Tuple[Optional[Dict[str, Route]], Mapping[str, str]]:
        methods = self._static.get(path)
        if methods is not None:
            return methods, NO_PARAMS
        for pattern, _, candidates in self._templates:
            match = pattern.match(path)
            if match:
                return candidates, match.groupdict()
        return None, NO_PARAMS

    def match(self, method: str, path: str) -> Tuple[Route, Mapping[str, str]]:
        """The route and path parameters; ``NotFound`` or ``MethodNotAllowed`` (with ``Allow``)."""
        methods = self._static.get(path)
        params: Mapping[str, str] = NO_PARAMS
        if methods is None:
            methods, params = self._methods_for(path)
        if methods is None:
            raise NotFound(f"no route for {path}", param="path")
        route = methods.get("GET" if method == "HEAD" else method)
        if route is None:
            allow = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            raise MethodNotAllowed(f"method {method} is not allowed on {path}", allow)
        return route, params
