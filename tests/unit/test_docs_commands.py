"""Documented commands name only flags, variables and targets that exist (issue 12.9).

A mechanical guard against docs drift: every `lifeboat ...` command line in
README.md and docs/*.md (code spans and code blocks) uses a real subcommand and
only options its parser has; every `-e NAME=` given to a playbook is read by that
playbook's tasks (directly, or through the lifeboat role's defaults and vars);
every `make TARGET` is a Makefile target; every `LIFEBOAT_*` variable is a
setting's. What the commands then do is tested in
tests/integration/test_documented_commands.py and the tests it names.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from lifeboat import cli, schema

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLAYBOOKS = ("backup", "restore", "verify", "status", "provision")
# Options that take a value: skipped with it before the subcommand.
VALUED_GLOBALS = {"--config", "--backup-dir", "--database"}
# LIFEBOAT_* names that are not settings: the config file's location, the benchmarks'
# knobs, and the pattern itself.
OTHER_ENV = {"LIFEBOAT_CONFIG", "LIFEBOAT_BENCH_SCALE", "LIFEBOAT_BENCH_URL", "LIFEBOAT_BENCH_JOBS"}


def doc_name(doc: Path) -> str:
    return str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else doc.name


def command_lines() -> list[tuple[str, str]]:
    """(where, text) for every inline code span (also one broken over two lines) and
    every code-block line (with its indented continuation lines joined), in README.md
    and docs/*.md."""
    found = []
    for doc in DOCS:
        name = doc_name(doc)
        block, prose, start = False, [], 1

        def spans(name: str, prose: list[str], start: int) -> None:
            text = "\n".join(prose)
            for match in re.finditer(r"`([^`]+)`", text):
                number = start + text.count("\n", 0, match.start())
                found.append((f"{name}:{number}", match.group(1).replace("\n", " ")))

        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                spans(name, prose, start)
                block, prose, start = not block, [], number + 1
                continue
            if not block:
                if not line.strip():
                    spans(name, prose, start)
                    prose, start = [], number + 1
                else:
                    prose.append(line)
                continue
            stripped = line.strip()
            if found and stripped.startswith(("[--", "--")) and found[-1][0].startswith(name):
                found[-1] = (found[-1][0], f"{found[-1][1]} {stripped}")
            else:
                found.append((f"{name}:{number}", stripped))
        spans(name, prose, start)
    return found


def subparsers() -> dict:
    parser = cli.build_parser()
    [action] = [a for a in parser._actions if a.dest == "command"]
    return parser, action.choices


def options(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


# A command line: `lifeboat ...` after an optional prompt, sudo, VAR=value assignments,
# a cron schedule (and user) and a directory; not prose that mentions lifeboat.
LIFEBOAT = re.compile(
    r"^(?:\$\s+)?(?:sudo\s+(?:-u\s+\S+\s+)?)?(?:[A-Z_]+=\S+\s+)*"
    r"(?:(?:[\d*,/-]+\s+){5}(?:[a-z]\w*\s+)?)?(?:\S*/)?lifeboat\s+(.*)$"
)


def lifeboat_commands() -> list[tuple[str, str]]:
    """(where, the text after `lifeboat `) of every documented lifeboat command line;
    comments (` # ...`) are cut off."""
    commands = []
    for where, text in command_lines():
        text = re.sub(r"\s#.*$", "", text)
        if text.lstrip().startswith("#"):
            continue
        match = LIFEBOAT.match(text.strip())
        if match:
            commands.append((where, match.group(1)))
    return commands


def test_the_parser_is_found():
    commands = lifeboat_commands()
    assert len(commands) > 40  # README's synopsis, the runbook, cron lines, ...
    assert any(rest.startswith("restore --latest --confirm") for _, rest in commands)


def lifeboat_problems() -> list[str]:
    top, subs = subparsers()
    problems = []
    for where, rest in lifeboat_commands():
        tokens = rest.split()
        i = 0
        while i < len(tokens) and re.match(r"--?[a-z]", tokens[i]):
            flag = tokens[i].split("=", 1)[0]
            if flag not in options(top):
                problems.append(f"{where}: `lifeboat {rest}`: no global option {flag}")
            i += 2 if flag in VALUED_GLOBALS and "=" not in tokens[i] else 1
        if i == len(tokens):
            continue
        word = tokens[i]
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            continue  # a placeholder: `lifeboat [GLOBAL OPTIONS] COMMAND`, `lifeboat COMMAND`
        if word not in subs:
            problems.append(f"{where}: `lifeboat {rest}`: no subcommand {word!r}")
            continue
        known = options(subs[word])
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(tokens[i + 1 :])):
            if flag not in known:
                problems.append(f"{where}: `lifeboat {rest}`: {word} has no option {flag}")
    return problems


def test_every_documented_lifeboat_command_uses_real_options():
    problems = lifeboat_problems()
    assert not problems, "\n".join(problems)


# --- ansible-playbook -e NAME=... ---------------------------------------------------------------


def role_variables() -> dict[str, str]:
    """The lifeboat role's defaults and vars: name -> its value as text."""
    merged = {}
    for part in ("defaults", "vars"):
        data = yaml.safe_load((ROOT / "roles" / "lifeboat" / part / "main.yml").read_text())
        merged.update({k: str(v) for k, v in data.items()})
    return merged


def playbook_text(name: str) -> str:
    """What a playbook runs: the lifeboat role's task file of that name (with the
    tasks it includes), or for provision every role's tasks, templates, vars and
    handlers."""
    if name == "provision":
        files = [ROOT / "playbooks" / "provision.yml"]
        for sub in ("tasks", "templates", "vars", "handlers"):
            files += sorted((ROOT / "roles").glob(f"*/{sub}/**/*"))
        return "\n".join(p.read_text() for p in files if p.is_file())
    tasks = ROOT / "roles" / "lifeboat" / "tasks"
    return (tasks / f"{name}.yml").read_text() + (tasks / "run_user.yml").read_text()


def readers(variable: str, variables: dict[str, str]) -> set[str]:
    """The variable and every role variable whose value is computed from it (transitively)."""
    names, grown = {variable}, True
    while grown:
        grown = False
        for key, value in variables.items():
            if key not in names and any(re.search(rf"\b{n}\b", value) for n in names):
                names.add(key)
                grown = True
    return names


def extra_vars() -> list[tuple[str, str, tuple[str, ...]]]:
    """(where, NAME, playbooks) for every documented `-e NAME=...`: the playbook named
    on the same line, else any of them."""
    found = []
    lines = {}
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            lines[f"{doc_name(doc)}:{number}"] = line
    for where, text in command_lines():
        for name in re.findall(r"(?:^|[\s\[])-e\s+([a-z_][a-z0-9_]*)=", text):
            named = re.findall(r"\b(backup|restore|verify|status|provision)\.yml\b", text)
            named = named or re.findall(r"lifeboat\.postgresql\.(\w+)", text)
            if not named:  # the playbook of the table row or sentence, if one is named
                named = re.findall(
                    r"\b(backup|restore|verify|status|provision)\.yml\b", lines[where]
                )
            found.append((where, name, tuple(dict.fromkeys(named)) or PLAYBOOKS))
    return found


def extra_var_problems() -> list[str]:
    variables = role_variables()
    texts = {name: playbook_text(name) for name in PLAYBOOKS}
    problems = []
    for where, name, playbooks in extra_vars():
        names = readers(name, variables)
        used = [
            pb for pb in playbooks
            if any(re.search(rf"\b{n}\b", texts[pb]) for n in names)
        ]  # fmt: skip
        if not used:
            problems.append(f"{where}: -e {name}= is read by none of {', '.join(playbooks)}.yml")
    return problems


def test_every_documented_extra_variable_is_read_by_its_playbook():
    assert len(extra_vars()) > 30
    problems = extra_var_problems()
    assert not problems, "\n".join(problems)


def test_restore_flag_table_matches_the_cli_and_the_playbook():
    """docs/restore.md "Flags": each CLI flag exists, each `-e` variable is read by restore.yml."""
    text = (ROOT / "docs" / "restore.md").read_text()
    table = text.split("## Flags", 1)[1].split("\n\n", 2)[1]
    _, subs = subparsers()
    known = options(subs["restore"])
    variables = role_variables()
    restore = playbook_text("restore")
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    assert len(rows) >= 10
    for row in rows:
        cli_cell, playbook_cell = row.split("|")[1:3]
        flag = re.match(r"\s*`(--[a-z0-9-]+)", cli_cell).group(1)
        assert flag in known, f"restore has no option {flag}: {row}"
        for name in re.findall(r"`([a-z_][a-z0-9_]*)=", playbook_cell):
            names = readers(name, variables)
            assert any(re.search(rf"\b{n}\b", restore) for n in names), (
                f"restore.yml does not read {name}: {row}"
            )


# --- make targets, LIFEBOAT_* variables -------------------------------------------------------


def make_targets() -> list[tuple[str, str]]:
    return [
        (where, target)
        for where, text in command_lines()
        for target in re.findall(r"(?:^|[\s;(])make\s+([a-z][\w-]*)", text)
    ]


def make_problems() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    return [f"{where}: make {target}" for where, target in make_targets() if target not in targets]


def test_every_documented_make_target_exists():
    assert {t for _, t in make_targets()} >= {"backup", "test", "collection", "molecule"}
    missing = make_problems()
    assert not missing, "\n".join(missing)


def env_problems() -> list[str]:
    settings = {f"LIFEBOAT_{s.name.upper()}" for s in schema.SETTINGS}
    unknown = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for name in re.findall(r"\bLIFEBOAT_[A-Z][A-Z0-9_]*\b", line):
                prefix = name.endswith("_") and any(s.startswith(name) for s in settings)
                if name not in settings | OTHER_ENV and not prefix:
                    unknown.append(f"{doc_name(doc)}:{number}: {name}")
    return unknown


def test_every_documented_lifeboat_environment_variable_is_a_setting():
    unknown = env_problems()
    assert not unknown, "\n".join(unknown)


DRIFTED = """
Run `lifeboat restore --latest --confrim` or `lifeboat restor --latest`, then
`lifeboat -q --jsn status` and `make backups`. In a table:
| `... restore.yml -e keep_replaced=true` | keeps it |

```bash
ansible-playbook playbooks/verify.yml -e verify_types=weekly
0 2 * * * postgres /usr/local/bin/lifeboat backup --kind daily >> /var/log/x.log 2>&1
LIFEBOAT_RETENTON='{daily: 3}' lifeboat backup
```
"""


def test_the_guard_fails_on_drifted_docs(tmp_path, monkeypatch):
    """Each check reports a wrong flag, subcommand, variable, target or setting."""
    doc = tmp_path / "drifted.md"
    doc.write_text(DRIFTED)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    text = "\n".join(lifeboat_problems())
    for wrong in ("has no option --confrim", "no subcommand 'restor'",
                  "no global option --jsn", "backup has no option --kind"):  # fmt: skip
        assert wrong in text, text
    text = "\n".join(extra_var_problems())
    assert "-e keep_replaced= is read by none of restore.yml" in text, text
    assert "-e verify_types= is read by none of verify.yml" in text, text
    assert make_problems() == ["drifted.md:3: make backups"]
    assert env_problems() == ["drifted.md:9: LIFEBOAT_RETENTON"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_are_read(doc):
    assert doc.read_text().strip()
