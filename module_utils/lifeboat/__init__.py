"""lifeboat engine: PostgreSQL backups and restores, pure Python.

Nothing in this package imports Ansible: the Ansible modules in `library/` and
the `lifeboat` CLI are thin adapters over the same functions. Imports inside
the package are relative so it works both as `lifeboat` (installed for the
CLI) and as `ansible.module_utils.lifeboat` (shipped by AnsiballZ).
"""

__version__ = "0.1.0"
