"""Claim paths: the syntax of oauth.claim() and the values role patterns see."""

from __future__ import annotations

import pytest
from unit_support import ROOT  # noqa: F401 - puts the repository on sys.path

from pyhook.claim_path import lookup, resolve, split_path

CLAIMS = {
    "sub": "alice",
    "email": "alice@example.com",
    "https://example.com/groups": ["dba", "ops"],
    "a.b": "top-level key with a dot",
    "a": {"b": "nested"},
    "realm_access": {
        "roles": ["admin", "user", 7, True, None, {"x": 1}, ["deep", [1.5]]]
    },
    "resource_access": {"my.app": {"roles": ["app-reader"]}, "other": {"roles": ["x"]}},
    "level": 3,
    "ratio": 0.5,
    "big": 10**20,
    "whole_float": 2.0,
    "active": True,
    "disabled": False,
    "nothing": None,
    "profile": {"name": "A"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("sub", ["alice"]),
        ("email", ["alice@example.com"]),
        ("https://example.com/groups", ["dba", "ops"]),
        ("a.b", ["top-level key with a dot"]),  # the whole path as a key wins
        ("a", []),  # an object is no candidate
        ("realm_access.roles", ["admin", "user", "7", "true", "deep", "1.5"]),
        ('resource_access."my.app".roles', ["app-reader"]),
        ("resource_access.other.roles", ["x"]),
        ("level", ["3"]),
        ("ratio", ["0.5"]),
        ("big", ["100000000000000000000"]),
        ("whole_float", ["2.0"]),
        ("active", ["true"]),
        ("disabled", ["false"]),
        ("nothing", []),
        ("missing", []),
        ("profile", []),
        ("profile.name", ["A"]),
        ("profile.name.more", []),
        ("realm_access.roles.0", ["admin"]),
        ("realm_access.roles.-1", ["deep", "1.5"]),
        ("realm_access.roles.99", []),
        ("sub.x", []),
        ("", []),
        ("...", []),
    ],
)
def test_resolve(path: str, expected: list[str]) -> None:
    assert resolve(CLAIMS, path) == expected


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("sub", ["sub"]),
        ("realm_access.roles", ["realm_access", "roles"]),
        ('resource_access."my.app".roles', ["resource_access", "my.app", "roles"]),
        ('"a.b"', ["a.b"]),
        (
            '"ab"',
            ["ab"],
        ),  # tie between the alternatives: the quoted one, as in PostgreSQL
        ('"a"b.c', ['"a"b', "c"]),  # the longer plain match wins, as in PostgreSQL
        ("a..b", ["a", "b"]),
        (".a.", ["a"]),
        ('"unclosed.x', ['"unclosed', "x"]),
        ('""', [""]),
    ],
)
def test_split_path_matches_sql_regexp(path: str, segments: list[str]) -> None:
    assert split_path(path) == segments


def test_lookup_of_non_object_claims() -> None:
    assert lookup(["not", "an", "object"], "0") is None
    assert resolve(None, "sub") == []


def test_deeply_nested_arrays_do_not_recurse() -> None:
    value: list = ["bottom"]
    for _ in range(5000):
        value = [value]
    assert resolve({"deep": value}, "deep") == ["bottom"]
