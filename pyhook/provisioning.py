"""Roles from the identity provider: the policies of oauth.provisioning and
oauth.group_roles, and the checks on the names a token gives (docs/provisioning.md).

Pure: what to create and grant is decided here and in the validator's mapping step;
the SQL function oauth._provision() checks the catalog and makes the changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyhook.config import RolePattern, compile_role_pattern, role_rule_problem

# NAMEDATALEN - 1: PostgreSQL would cut a longer name short, and two users could
# end up with one role
NAME_MAX_BYTES = 63
# letters, digits and _ . @ + - (an e-mail address, a UPN, a GUID); not starting
# with a character pg_hba.conf reads as an operator (+group, @file, /regex)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*")
# PostgreSQL's role specifications and pg_hba.conf's keywords
RESERVED_NAMES = frozenset(
    {
        "public", "none", "all", "current_user", "current_role", "session_user", "user",
        "replication", "samerole", "samegroup",
    }
)
# a groups claim the identity provider left out because there were too many
# (Entra ID: _claim_names points at a Graph call; the implicit flow: hasgroups)
_OVERFLOW_MARKERS = ("_claim_names", "hasgroups")


def name_problem(name: str) -> str | None:
    """Why ``name`` may not become a role pg_oauth creates (None: it may).

    oauth._provision_name_problem() in SQL says the same, next to the CREATE ROLE.
    """
    if not name:
        return "the name is empty"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > NAME_MAX_BYTES:
        return f"the name is {size} bytes long; role names hold at most {NAME_MAX_BYTES}"
    if not name.isascii() or _NAME.fullmatch(name) is None:
        return (
            "the name has characters other than letters, digits and _ . @ + - "
            "(or starts with one of . @ + -)"
        )
    if name.lower().startswith("pg_"):
        return "names starting with pg_ are reserved for PostgreSQL's own roles"
    if name.lower() in RESERVED_NAMES:
        return "the name is a reserved word of PostgreSQL or pg_hba.conf"
    return None


def groups_overflowed(claims: Mapping[str, Any], groups_claim: str) -> bool:
    """Whether the identity provider said the token's groups did not fit in it."""
    names = claims.get("_claim_names")
    top = groups_claim.split(".", 1)[0]
    if isinstance(names, dict) and (groups_claim in names or top in names):
        return True
    return claims.get("hasgroups") is True and top not in claims


@dataclass(frozen=True)
class GroupRule:
    id: int
    pattern: str
    regex: RolePattern
    role: str


@dataclass(frozen=True)
class ProvisioningPolicy:
    issuer: str
    role_claim: str
    role_pattern: str
    regex: RolePattern
    role_name: str
    lowercase: bool
    groups_claim: str | None
    max_groups: int
    group_rules: tuple[GroupRule, ...]


@dataclass(frozen=True)
class ProvisioningPlan:
    """What a login's role needs: oauth._provision() makes it so."""

    issuer: str
    subject: str
    role: str
    # the group roles the token's groups give; None: memberships are not synced
    groups: tuple[str, ...] | None
    # the token's groups, counted before mapping
    token_groups: int
    # oauth.role_map admits this role too: a role pg_oauth did not create stays
    # the DBA's, and is neither refused nor touched
    mapped: bool = False
    # why groups gave no role (the first ten), for the server log and explain
    skipped: tuple[str, ...] = ()


def policies_from_rows(
    policy_rows: Iterable[Mapping[str, Any]], group_rows: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, ProvisioningPolicy], list[str]]:
    """The enabled policies by issuer, and a sentence for each row skipped."""
    skipped: list[str] = []
    rules: dict[str, list[GroupRule]] = {}
    for row in group_rows:
        try:
            rules.setdefault(str(row["issuer"]), []).append(
                GroupRule(
                    id=int(row["id"]),
                    pattern=str(row["group_pattern"]),
                    regex=compile_role_pattern(str(row["group_pattern"])),
                    role=str(row["role"]),
                )
            )
        except Exception as exc:  # noqa: BLE001 - one broken rule must not break the others
            skipped.append(f"group_roles rule id {row.get('id')} skipped: {exc}")
    policies: dict[str, ProvisioningPolicy] = {}
    for row in policy_rows:
        if not row["enabled"]:
            continue
        issuer = str(row["issuer"])
        try:
            policies[issuer] = ProvisioningPolicy(
                issuer=issuer,
                role_claim=str(row["role_claim"]),
                role_pattern=str(row["role_pattern"]),
                regex=compile_role_pattern(str(row["role_pattern"])),
                role_name=str(row["role_name"]),
                lowercase=bool(row["lowercase"]),
                groups_claim=None if row["groups_claim"] is None else str(row["groups_claim"]),
                max_groups=int(row["max_groups"]),
                group_rules=tuple(sorted(rules.get(issuer, []), key=lambda r: r.id)),
            )
        except Exception as exc:  # noqa: BLE001
            skipped.append(f"provisioning policy of issuer {issuer!a} skipped: {exc}")
    return policies, skipped


def policy_row_problem(table: str, row: Mapping[str, Any]) -> str | None:
    """Why a row of oauth.provisioning or oauth.group_roles could not be used (None:
    it can); for the SQL trigger."""
    if table == "provisioning":
        problem = role_rule_problem(str(row["role_pattern"]), str(row["role_name"]))
        if problem is not None:
            return f"role_pattern/role_name: {problem}"
        if any(not role for role in row.get("member_of") or []):
            return "member_of holds an empty role name"
        return None
    if table == "group_roles":
        problem = role_rule_problem(str(row["group_pattern"]), str(row["role"]))
        return None if problem is None else f"group_pattern/role: {problem}"
    return f"no such table {table!a}"
