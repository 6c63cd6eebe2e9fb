"""Redis users per role: what each process may read and write, as a Redis 7 ACL file.

Every key the project writes is named in contracts/keys.py; Feast's online-store keys end with
the Feast project's name (`serialize(entity key) + project`). The roles:

- `worker`: user state and item stats in Feast, the shared item model (`items-*`), lists and the
  update stream (`recs:*`, `recs-*`), the intent requests' replies (`intent:*`), `metrics*`;
  the model registry read-only (it serves the sequential route's promoted version).
- `reasoner`: reads Feast and the item model, writes `recs:*`, `intent:*`, `recs-updates`,
  `metrics*`; the registry read-only.
- `reader` (the shop): reads `recs:*`, `recs-popular` and the `recs-updates` stream; nothing else.
- `trainer`: writes the registry (`model:*`), reads everything under the prefix.
- `admin`: everything (`intentstream up`, tests' clean-up, operators).

No role but `admin` may run @admin or @dangerous commands (CONFIG, FLUSHALL, KEYS, DEBUG, ...).
The default user is off: a client without credentials is refused. Passwords are stored hashed
(`#sha256`), never in the clear.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import NamedTuple

from contracts.keys import RedisKeys

ROLES = ("worker", "reasoner", "reader", "trainer", "admin")
_SERVICE = "+@all -@admin -@dangerous"
_READ = "-@all +@read +@connection -@dangerous"


class Role(NamedTuple):
    name: str
    write: tuple[str, ...]
    """Key patterns it may read and write."""
    read: tuple[str, ...]
    """Key patterns it may only read."""
    commands: str


def roles(prefix: str, feast_project: str) -> list[Role]:
    k = RedisKeys(prefix)
    feast = f"*{feast_project}"
    recs, intent = k.recs("*"), k.intent("*")
    items, metrics, model = f"{prefix}items-*", f"{prefix}metrics*", f"{prefix}model:*"
    return [
        Role("worker", (feast, recs, intent, f"{prefix}recs-*", items, metrics), (model,), _SERVICE),
        Role("reasoner", (recs, intent, k.updates, metrics), (feast, items, model, k.popular), _SERVICE),
        Role("reader", (), (recs, k.popular, k.updates), _READ),
        Role("trainer", (model,), (f"{prefix}*", feast), _SERVICE),
        Role("admin", ("*",), (), "+@all"),
    ]


def acl_line(role: Role, password: str) -> str:
    """One ACL file line (the password hashed).

    >>> line = acl_line(Role("reader", (), ("recs:*",), "-@all +@read"), "pw")
    >>> line[:44], line[-46:]
    ('user reader on #30c952fab122c3f9759f02a6d95c', 'resetchannels resetkeys %R~recs:* -@all +@read')
    """
    digest = hashlib.sha256(password.encode()).hexdigest()
    patterns = [f"~{p}" for p in role.write] + [f"%R~{p}" for p in role.read]
    channels = "&*" if role.name == "admin" else "resetchannels"
    return " ".join(["user", role.name, "on", f"#{digest}", channels, "resetkeys", *patterns, role.commands])


def write_acl(directory: Path, prefix: str, feast_project: str,
              passwords: dict[str, str] | None = None) -> dict[str, str]:
    """`directory/users.acl` (load it with services.redis_acl_file) and one `<role>.env` per role
    with its INTENTSTREAM_REDIS__USERNAME / __PASSWORD, all mode 0600; random passwords unless
    given. Returns role -> password."""
    directory.mkdir(parents=True, exist_ok=True)
    passwords = {r: (passwords or {}).get(r) or secrets.token_urlsafe(24) for r in ROLES}
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [acl_line(role, passwords[role.name]) for role in roles(prefix, feast_project)]
    _private(directory / "users.acl", "\n".join(lines) + "\n")
    for role in ROLES:
        _private(directory / f"{role}.env",
                 f"INTENTSTREAM_REDIS__USERNAME={role}\nINTENTSTREAM_REDIS__PASSWORD={passwords[role]}\n")
    return passwords


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
