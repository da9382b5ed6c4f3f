"""Database-level properties: what pg_dump (without --create) leaves out.

Owner, encoding, locale provider and ICU locale, collate/ctype, connection
limit, grants on the database, its comment, `ALTER DATABASE ... SET` and
`ALTER ROLE ... IN DATABASE ... SET` settings. A backup records them in its
manifest (`database_properties`); a restore creates its scratch database from
them, read from the live database it replaces or, when that is gone, from the
manifest (restore/scratch.py). One reader, one shape, both sources.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Privileges a database's PUBLIC pseudo-role has by default (acldefault).
PUBLIC_DEFAULT = ("CONNECT", "TEMPORARY")


@dataclass(frozen=True)
class Grant:
    grantee: str | None  # None: PUBLIC
    privilege: str  # CONNECT, CREATE, TEMPORARY
    grantable: bool = False


@dataclass(frozen=True)
class Setting:
    role: str | None  # None: for every role (ALTER DATABASE ... SET)
    name: str
    value: str  # as stored in pg_db_role_setting


@dataclass
class DbProps:
    """How to create a database like another; None fields take the server's default."""

    name: str = ""  # the database they were read from (for messages)
    owner: str | None = None
    encoding: str | None = None
    collate: str | None = None
    ctype: str | None = None
    provider: str | None = None  # 'c' (libc) or 'i' (icu)
    icu_locale: str | None = None
    connlimit: int = -1
    comment: str | None = None
    # None: the default privileges (PUBLIC may connect); a list: exactly these
    # grants besides the owner's own (an empty list: nobody but the owner).
    acl: list[Grant] | None = None
    settings: list[Setting] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> DbProps | None:
        """Properties from a manifest; None when it has none (older or stock backups)."""
        if not isinstance(data, dict):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        acl = known.get("acl")
        known["acl"] = None if acl is None else [Grant(**g) for g in acl]
        known["settings"] = [Setting(**s) for s in known.get("settings") or []]
        return cls(**known)

    def closed(self) -> DbProps:
        """Same locale and owner; no grants, settings or comment (drill scratch copies)."""
        return DbProps(
            name=self.name,
            owner=self.owner,
            encoding=self.encoding,
            collate=self.collate,
            ctype=self.ctype,
            provider=self.provider,
            icu_locale=self.icu_locale,
            acl=[],
        )


def locale_columns(version: int) -> tuple[str, str]:
    """pg_database's locale provider and ICU locale columns, as this server names them."""
    icu = "daticulocale" if version >= 150000 else "NULL"
    icu = "datlocale" if version >= 170000 else icu
    provider = "datlocprovider::text" if version >= 150000 else "'c'"
    return provider, icu


def read(db, name: str) -> DbProps | None:
    """The properties of database `name` as the server holds them; None if it does not exist."""
    provider, icu = locale_columns(db.info.server_version)
    row = db.execute(
        f"SELECT oid, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate,"
        f" datctype, {provider}, {icu}, datconnlimit, shobj_description(oid, 'pg_database'),"
        f" datacl IS NULL FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    oid, owner, encoding, collate, ctype, prov, icu_locale, connlimit, comment, default_acl = row
    acl = None
    if not default_acl:
        acl = [
            Grant(grantee, privilege, grantable)
            for grantee, privilege, grantable in db.execute(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
                " a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a"
                " WHERE d.oid = %s AND a.grantee <> d.datdba ORDER BY 1 NULLS FIRST, 2",
                (oid,),
            ).fetchall()
        ]
    settings = [
        Setting(role, *item.split("=", 1))
        for role, item in db.execute(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,"
            " unnest(s.setconfig) FROM pg_db_role_setting s WHERE s.setdatabase = %s"
            " ORDER BY s.setrole",
            (oid,),
        ).fetchall()
    ]
    return DbProps(
        name=name,
        owner=owner,
        encoding=encoding,
        collate=collate,
        ctype=ctype,
        provider=prov,
        icu_locale=icu_locale,
        connlimit=connlimit,
        comment=comment,
        acl=acl,
        settings=settings,
    )
