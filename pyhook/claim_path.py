"""Claim paths, with the same syntax as oauth.claim() (pg_oauth_ext/session_state.c).

A top-level claim whose name is exactly the path wins (``https://example.com/groups``);
otherwise the path is split into segments separated by dots, and a segment may be
double-quoted to contain dots (``resource_access."my.app".roles``). As with jsonb's
``#>>`` an integer segment indexes an array.
"""

from __future__ import annotations

import re
from typing import Any

_MISSING = object()
_ARRAY_INDEX = re.compile(r"-?[0-9]{1,9}")


def split_path(path: str) -> list[str]:
    """Segments of a dotted path, as SQL's regexp_matches(path, '"([^"]*)"|([^.]+)', 'g').

    PostgreSQL's regex engine takes the longest of the two alternatives at each
    position (the quoted one on a tie), so this scans the same way rather than
    relying on Python's first-alternative-wins rule.
    """
    segments: list[str] = []
    i, n = 0, len(path)
    while i < n:
        quoted_end = -1
        if path[i] == '"':
            close = path.find('"', i + 1)
            if close != -1:
                quoted_end = close + 1
        plain_end = i
        while plain_end < n and path[plain_end] != ".":
            plain_end += 1
        if quoted_end == -1 and plain_end == i:
            i += 1  # a dot: no segment starts here
            continue
        if quoted_end >= plain_end:
            segments.append(path[i + 1 : quoted_end - 1])
            i = quoted_end
        else:
            segments.append(path[i:plain_end])
            i = plain_end
    return segments


def lookup(claims: Any, path: str) -> Any:
    """The JSON value at ``path``, or ``None`` when it is absent."""
    if not isinstance(claims, dict):
        return None
    if path in claims:
        return claims[path]
    segments = split_path(path)
    if not segments:
        return None
    value: Any = claims
    for segment in segments:
        if isinstance(value, dict):
            value = value.get(segment, _MISSING)
        elif isinstance(value, list):
            value = _index(value, segment)
        else:
            return None
        if value is _MISSING:
            return None
    return value


def _index(array: list[Any], segment: str) -> Any:
    if not _ARRAY_INDEX.fullmatch(segment):
        return _MISSING
    position = int(segment)
    if -len(array) <= position < len(array):
        return array[position]
    return _MISSING


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as the text a role pattern is matched against; None for others."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def resolve(claims: Any, path: str) -> list[str]:
    """Candidate string values at ``path``: a scalar gives one, an array its scalars."""
    value = lookup(claims, path)
    if not isinstance(value, list):
        text = scalar_text(value)
        return [] if text is None else [text]
    # iterative flattening: nesting depth is bounded only by the JSON parser
    out: list[str] = []
    stack: list[Any] = [iter(value)]
    while stack:
        item = next(stack[-1], _MISSING)
        if item is _MISSING:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            text = scalar_text(item)
            if text is not None:
                out.append(text)
    return out
