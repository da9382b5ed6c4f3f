"""The PostgreSQL server the Molecule hosts back up (containers share the host network).

  molecule_pg.py start ROOT  -> prints DB_URL=..., DB2_URL=..., DB3_URL=..., SERVER_MAJOR=...,
                                PITR_PORT=... lines
  molecule_pg.py stop ROOT   -> stops the cluster and removes ROOT

Three databases (plotzed, reports and ledger, the demo schema) owned by a role
whose password needs URL-encoding, reached over 127.0.0.1 with scram-sha-256.
lifeboat-db1 backs up the first two, lifeboat-db2 the third, so the hosts'
restores never replace the same database at once. PITR_PORT is a free port for
the cluster lifeboat-db1 runs itself (point-in-time recovery needs the server on
the host that archives its WAL; the hosts share this network).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgcluster

OWNER, PASSWORD = "plotzed", "mol p@ss/w:rd%"


def start(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    cluster = pgcluster.Cluster(root / "pgdata", pgcluster.free_port())
    cluster.init()
    cluster.start()
    urls = [cluster.create_owner(OWNER, PASSWORD, "plotzed")]
    for extra in ("reports", "ledger"):
        cluster.psql(f'CREATE DATABASE {extra} OWNER "{OWNER}"')
        urls.append(cluster.url(OWNER, PASSWORD, extra))
    schema = root / "schema.sql"
    schema.write_text(pgcluster.DEMO_SCHEMA)
    schema.chmod(0o644)
    for db in ("plotzed", "reports", "ledger"):
        cluster.psql_file(str(schema), db)
        cluster.psql(
            f'ALTER TABLE users OWNER TO "{OWNER}"; ALTER TABLE plots OWNER TO "{OWNER}"', db=db
        )
    major = int(cluster.psql("SHOW server_version_num")) // 10000
    print(f"DB_URL={urls[0]}\nDB2_URL={urls[1]}\nDB3_URL={urls[2]}\nSERVER_MAJOR={major}")
    print(f"PITR_PORT={pgcluster.free_port()}")
    return 0


def stop(root: Path) -> int:
    datadir = root / "pgdata"
    if datadir.exists():
        pgcluster.Cluster(datadir, 0).stop("immediate")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: molecule_pg.py start|stop ROOT")
    sys.exit((start if sys.argv[1] == "start" else stop)(Path(sys.argv[2])))
