"""Step 3: the scratch database, created like the original (live, or from the manifest)."""

from __future__ import annotations

from ..conninfo import ConnInfo
from ..dbprops import PUBLIC_DEFAULT, DbProps, Setting
from .database import ident, psycopg_lib, run_sql, sql_lib

DATABASE_PRIVILEGES = ("CONNECT", "CREATE", "TEMPORARY")
LIST_GUCS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
}


def list_value(value: str) -> str:
    """A stored list GUC value ('"$user", public') as SQL literals, one per item."""
    items, current, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append(current.strip())
            current = ""
            continue
        current += ch
    items.append(current.strip())
    return ", ".join(
        sql_lib().Literal(i[1:-1] if i.startswith('"') and i.endswith('"') else i).as_string(None)
        for i in items
        if i
    )


def create_like(
    db, new: str, like: DbProps | None, conn: ConnInfo, final: str | None = None
) -> list[str]:
    """CREATE DATABASE `new` with the properties `like` (read live or from a manifest).

    `final` is the name the database will have after the swap: warnings name it
    in the statement a superuser can run later. Owner, encoding and locale are
    part of CREATE DATABASE and must succeed; settings, the comment and grants
    the restoring role cannot reapply become warnings and never stop a restore.
    """
    sql = sql_lib()
    final = final or new
    warnings: list[str] = []
    parts = [sql.SQL("CREATE DATABASE {}").format(ident(new))]
    like = like or DbProps()
    parts.append(sql.SQL("TEMPLATE template0"))
    for keyword, value in (
        ("ENCODING", like.encoding),
        ("LC_COLLATE", like.collate),
        ("LC_CTYPE", like.ctype),
    ):
        if value:
            parts.append(sql.SQL(keyword + " {}").format(sql.Literal(value)))
    if like.provider == "i":
        parts.append(
            sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like.icu_locale))
        )
    # No CONNECTION LIMIT or settings yet (finish_like sets them before the swap):
    # the restore's own connections would count against the limit, and settings such
    # as default_transaction_read_only or a role's `role` are for the application,
    # not for the load, which runs as in a fresh database (as `createdb; psql` would).
    owner_error, created = "", False
    if like.owner:
        psycopg = psycopg_lib()
        owned = sql.SQL(" ").join([*parts, sql.SQL("OWNER {}").format(ident(like.owner))])
        try:
            db.execute(owned)
            created = True
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedObject) as exc:
            text = " ".join(str(exc).split())
            if "create database" not in text.lower():  # else run_sql says what is missing
                owner_error = text
        except psycopg.Error:  # anything else: the typed error, with its hint
            run_sql(db, owned, action=f"create database {new}", conn=conn)
    if not created:
        # Not a member of the owner role, or the role does not exist here: the
        # database is owned by the restoring role until a superuser fixes it.
        run_sql(db, sql.SQL(" ").join(parts), action=f"create database {new}", conn=conn)
    if owner_error:
        statement = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(final), ident(like.owner))
        warnings.append(
            f"owner of database {final} not reapplied ({owner_error}); "
            f"have a superuser run: {statement.as_string(db)};"
        )

    statements = acl_statements(like)
    if like.comment is not None:
        comment = sql.Literal(like.comment)
        statements.insert(
            0,
            (
                "comment",
                lambda name: sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(name), comment),
            ),
        )
    for what, statement in statements:
        warnings += reapply(db, what, statement, new, final)
    return warnings


def reapply(db, what: str, statement, new: str, final: str) -> list[str]:
    """Run statement(new); on failure, a warning with what to run against `final`, and why."""
    try:
        db.execute(statement(new))
    except psycopg_lib().Error as exc:
        text = statement(final).as_string(db)
        return [
            f"{what} of database {final} not reapplied ({' '.join(str(exc).split())}); "
            f"have a superuser run: {text};"
        ]
    return []


def finish_like(db, new: str, like: DbProps | None, final: str) -> list[str]:
    """The original's settings and connection limit, once the load and its checks are done."""
    if like is None:
        return []
    statements = [
        (
            f"setting {s.name}" + (f" for role {s.role}" if s.role else ""),
            lambda name, s=s: set_statement(name, s),
        )
        for s in like.settings
    ]
    if like.connlimit != -1:
        limit = sql_lib().Literal(like.connlimit)
        statements.append(
            (
                "connection limit",
                lambda name: (
                    sql_lib()
                    .SQL("ALTER DATABASE {} CONNECTION LIMIT {}")
                    .format(ident(name), limit)
                ),
            )
        )
    return [w for what, statement in statements for w in reapply(db, what, statement, new, final)]


def set_statement(dbname: str, setting: Setting):
    sql = sql_lib()
    value = (
        list_value(setting.value)
        if setting.name.lower() in LIST_GUCS
        else sql.Literal(setting.value).as_string(None)
    )
    prefix = (
        sql.SQL("ALTER ROLE {} IN DATABASE {}").format(ident(setting.role), ident(dbname))
        if setting.role
        else sql.SQL("ALTER DATABASE {}").format(ident(dbname))
    )
    return sql.SQL("{} SET {} TO {}").format(prefix, ident(setting.name), sql.SQL(value))


def acl_statements(like: DbProps) -> list[tuple[str, object]]:
    """REVOKE/GRANT statements turning a new database's default grants into `like.acl`.

    Only the difference from the default is applied, in the order a user
    would have made it, so the resulting ACL reads the same as the original's.
    The owner keeps its own default privileges.
    """
    if like.acl is None:
        return []
    sql = sql_lib()
    public = {g.privilege for g in like.acl if g.grantee is None}
    out = []
    revoke = [p for p in PUBLIC_DEFAULT if p not in public]
    if revoke:
        out.append(
            (
                f"revoke of {', '.join(revoke)} from PUBLIC",
                lambda name: sql.SQL("REVOKE {} ON DATABASE {} FROM PUBLIC").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in revoke), ident(name)
                ),
            )
        )
    grants: dict[tuple[str | None, bool], list[str]] = {}
    for g in like.acl:
        if g.privilege not in DATABASE_PRIVILEGES:
            continue  # a manifest is data: only known keywords ever become SQL
        if g.grantee is None and g.privilege in PUBLIC_DEFAULT and not g.grantable:
            continue  # PUBLIC has it by default
        grants.setdefault((g.grantee, g.grantable), []).append(g.privilege)
    for (grantee, grantable), privileges in grants.items():
        who = ident(grantee) if grantee else sql.SQL("PUBLIC")
        option = sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")
        out.append(
            (
                f"grant of {', '.join(privileges)} to {grantee or 'PUBLIC'}",
                lambda name, who=who, option=option, privileges=privileges: sql.SQL(
                    "GRANT {} ON DATABASE {} TO {}{}"
                ).format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges), ident(name), who, option
                ),
            )
        )
    return out
