"""Who may do what with a bank: the one place these rules live (routes and the CLI call them).

- read (search, grounded chat): the grant `knowledge:<bank>:use` (developer and app keys hold
  `knowledge:*:use`); what a reader then sees is decided per chunk by the document ACLs, inside the
  index query.
- manage (ingest, delete documents): the grant `knowledge:<bank>:write` (admins), or a developer key
  of the bank's owner team.
- read everything regardless of ACLs: only `knowledge:<bank>:read_all` (admins), only when asked
  for explicitly, and audited by the caller.
"""

from __future__ import annotations

from meshgate.control.grants import allowed
from meshgate.control.policy import PermissionDenied, Policy, Principal
from meshgate.knowledge.records import BankRecord


def require_read(principal: Principal, bank: BankRecord) -> None:
    Policy.authorize(principal, "knowledge", bank.name, "use")


def may_manage(principal: Principal, bank: BankRecord) -> bool:
    if allowed(principal.grants, "knowledge", bank.name, "write"):
        return True
    return principal.role == "developer" and bank.team is not None and principal.team == bank.team


def require_manage(principal: Principal, bank: BankRecord) -> None:
    if may_manage(principal, bank):
        return
    raise PermissionDenied(
        f"The {principal.role} key `{principal.key_name}` may not manage the bank `{bank.name}`: "
        f"it takes the grant knowledge:{bank.name}:write or a developer key of its team"
        + (f" `{bank.team}`." if bank.team else ".")
    )


def require_create(principal: Principal, team: str | None) -> None:
    if allowed(principal.grants, "knowledge", "*", "write"):
        return
    if principal.role == "developer" and team is not None and team == principal.team:
        return
    raise PermissionDenied(
        f"The {principal.role} key `{principal.key_name}` may create banks only for its own team "
        f"(`--team {principal.team}`), or with the grant knowledge:*:write."
    )


def require_read_all(principal: Principal, bank: BankRecord) -> None:
    if not allowed(principal.grants, "knowledge", bank.name, "read_all"):
        raise PermissionDenied(
            f"Reading every document of `{bank.name}` regardless of ACLs takes the grant "
            f"knowledge:{bank.name}:read_all (admins)."
        )
