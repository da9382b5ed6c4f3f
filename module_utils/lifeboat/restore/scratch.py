"""Step 3: the scratch database, created like the original."""

from __future__ import annotations

from ..conninfo import ConnInfo
from .database import DbInfo, ident, psycopg_lib, run_sql, sql_lib

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


def create_like(db, new: str, like: DbInfo | None, conn: ConnInfo) -> list[str]:
    """CREATE DATABASE `new` mirroring `like` (owner, locale, settings, grants)."""
    sql = sql_lib()
    warnings = []
    if like is None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident(new))
    else:
        parts = [
            sql.SQL(
                "CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING {} "
                "LC_COLLATE {} LC_CTYPE {}"
            ).format(
                ident(new),
                ident(like.owner),
                sql.Literal(like.encoding),
                sql.Literal(like.collate),
                sql.Literal(like.ctype),
            )
        ]
        if like.provider == "i":
            parts.append(
                sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like.icu_locale))
            )
        if like.connlimit != -1:
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(like.connlimit)))
        statement = sql.SQL(" ").join(parts)
    run_sql(db, statement, action=f"create database {new}", conn=conn)
    if like is None:
        return warnings
    # Database-level settings (ALTER DATABASE ... SET) and per-role ones.
    rows = db.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,"
        " unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d"
        " ON d.oid = s.setdatabase WHERE d.datname = %s",
        (like.name,),
    ).fetchall()
    for role, item in rows:
        name, _, value = item.partition("=")
        literal = (
            list_value(value) if name.lower() in LIST_GUCS else sql.Literal(value).as_string(None)
        )
        prefix = (
            sql.SQL("ALTER ROLE {} IN DATABASE {}").format(ident(role), ident(new))
            if role
            else sql.SQL("ALTER DATABASE {}").format(ident(new))
        )
        statement = sql.SQL("{} SET {} TO " + literal.replace("{", "{{").replace("}", "}}"))
        try:
            db.execute(statement.format(prefix, ident(name)))
        except psycopg_lib().Error as exc:
            # E.g. a superuser-only setting: never worth blocking an emergency restore.
            where = f"ROLE {role} IN DATABASE" if role else "DATABASE"
            warnings.append(
                f"setting {name} of {like.name} not copied ({' '.join(str(exc).split())}); "
                f"have a superuser run: ALTER {where} {like.name} SET {name} TO {literal}"
            )
    if like.comment is not None:
        db.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(new), sql.Literal(like.comment))
        )
    if like.has_acl:
        grants = db.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
            " a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a"
            " WHERE d.datname = %s AND a.grantee <> d.datdba",
            (like.name,),
        ).fetchall()
        db.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident(new)))
        for grantee, privilege, grantable in grants:
            who = ident(grantee) if grantee else sql.SQL("PUBLIC")
            option = sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")
            try:
                db.execute(
                    sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                        sql.SQL(privilege), ident(new), who, option
                    )
                )
            except psycopg_lib().Error as exc:
                warnings.append(
                    f"grant of {privilege} to {grantee or 'PUBLIC'} not copied: "
                    f"{' '.join(str(exc).split())}"
                )
    return warnings
