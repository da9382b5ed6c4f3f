"""Build the `lifeboat.postgresql` Ansible collection from this repository.

Usage: python tools/build_collection.py [--no-tarball] [--source DIR] [--build-dir DIR]

Assembles BUILD/collection/ansible_collections/lifeboat/postgresql/ (BUILD is
build/ by default) from the top-level layout (library/, module_utils/,
doc_fragments/, roles/, playbooks/) and runs `ansible-galaxy collection build`
into BUILD. The collection is a build artifact: none of it is kept in git.

Names are rewritten to the collection's: module `lifeboat_backup` ->
`lifeboat.postgresql.backup`, role `lifeboat` -> `lifeboat.postgresql.lifeboat`,
`ansible.module_utils.lifeboat` -> the collection's module_utils, doc fragment
`lifeboat.s3` -> `lifeboat.postgresql.lifeboat.s3`. Every rewrite the collection
needs in order to work must find what it expects, and no short name may be
left behind: a renamed module, role or import fails the build here instead of
producing a broken collection. Standard library only (plus ansible-galaxy).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE, NAME = "lifeboat", "postgresql"
FQ = f"{NAMESPACE}.{NAME}"
UTILS_IMPORT = f"ansible_collections.{NAMESPACE}.{NAME}.plugins.module_utils.lifeboat"
# What the lifeboat role reads from `lifeboat_source_dir` (the collection root
# once installed) to build the engine's wheel and install its pinned deps.
ROLE_SOURCE_FILES = ("pyproject.toml", "README.md", "requirements/host.txt")
# The one validate-modules check that does not fit: modules carrying
# ansible-core's own license header.
GPL_REASON = "lifeboat is MIT-licensed (pyproject.toml), not GPLv3 like ansible-core"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")


class BuildError(Exception):
    pass


def tree_of(build: Path) -> Path:
    """ansible-test needs the collection at a path ending ansible_collections/NS/NAME."""
    return build / "collection" / "ansible_collections" / NAMESPACE / NAME


def core_minor(src: Path) -> str:
    """ansible-core X.Y pinned for the control node: what the collection is tested with."""
    pin = re.search(
        r"^ansible-core==(\d+)\.(\d+)\.", (src / "requirements" / "runtime.txt").read_text(), re.M
    )
    if not pin:
        raise BuildError("requirements/runtime.txt: expected an 'ansible-core==X.Y.Z' pin")
    return f"{pin[1]}.{pin[2]}"


def project(src: Path) -> dict:
    return tomllib.loads((src / "pyproject.toml").read_text())["project"]


def yaml_doc(data: dict) -> str:
    """A top-level mapping as YAML: JSON is valid YAML for every value."""
    return "---\n" + "".join(f"{key}: {json.dumps(value)}\n" for key, value in data.items())


def fragment_names(src: Path) -> set[str]:
    """Doc fragments as modules name them: `<file>.<lowercased attribute>`."""
    names = set()
    for path in (src / "doc_fragments").glob("*.py"):
        for attr in re.findall(r'^    ([A-Z][A-Z0-9_]*) = r?"""', path.read_text(), re.M):
            names.add(f"{path.stem}.{attr.lower()}")
    return names


def module_sources(src: Path) -> dict[str, Path]:
    """Every module by its checkout name: library/lifeboat_<x>.py and roles/*/library/*.py.

    Collection roles cannot carry modules (Ansible ignores their library/), so
    a role's own modules join plugins/modules under the name they already have."""
    found = {p.stem: p for p in (src / "library").glob("lifeboat_*.py")}
    if not found:
        raise BuildError("library/: no lifeboat_*.py modules found")
    for path in sorted((src / "roles").glob("*/library/*.py")):
        if path.stem in found:
            raise BuildError(f"{path.relative_to(src)}: a module named {path.stem} exists already")
        found[path.stem] = path
    return found


def collection_name(name: str) -> str:
    """lifeboat_backup -> backup; a role's module keeps its name."""
    return name.removeprefix("lifeboat_")


def task_keys(text: str, modules: dict[str, str]) -> tuple[str, set[str]]:
    """`lifeboat_x:` task (or example) keys -> `lifeboat.postgresql.x:`; returns those found."""
    pattern = rf"^(\s*(?:- )?)({'|'.join(modules)}):[ \t]*$"
    found = set(re.findall(pattern, text, re.M))
    text = re.sub(pattern, lambda m: f"{m[1]}{FQ}.{modules[m[2]]}:", text, flags=re.M)
    return text, {name for _, name in found}


def rewrite_utils_imports(text: str, where: str) -> str:
    new, count = re.subn(r"\bansible\.module_utils\.lifeboat\b", UTILS_IMPORT, text)
    if not count:
        raise BuildError(f"{where}: expected imports of ansible.module_utils.lifeboat, found none")
    return new


def build_module(
    src: Path, path: Path, short: str, modules: dict[str, str], fragments: set[str]
) -> str:
    where = str(path.relative_to(src))
    text = rewrite_utils_imports(path.read_text(), where)
    text, count = re.subn(rf"^module: {path.stem}$", f"module: {short}", text, flags=re.M)
    if count != 1:
        raise BuildError(
            f"{where}: expected one 'module: {path.stem}' in DOCUMENTATION, found {count}"
        )
    block = re.search(r"^extends_documentation_fragment:\n((?:  - .*\n)+)", text, re.M)
    if block:
        items = re.findall(r"^  - (\S+)$", block[1], re.M)
        unknown = [i for i in items if i not in fragments]
        if unknown:
            raise BuildError(f"{where}: unknown doc fragments {unknown} (have {sorted(fragments)})")
        fq_items = "".join(f"  - {FQ}.{i}\n" for i in items)
        text = text[: block.start(1)] + fq_items + text[block.end(1) :]
    # M(), O(...#module:...) and seealso `- module:` references, then EXAMPLES' task keys.
    text = re.sub(
        rf"(M\(|O\(|- module: )({'|'.join(modules)})\b",
        lambda m: f"{m[1]}{FQ}.{modules[m[2]]}",
        text,
    )
    text, used = task_keys(text, modules)
    if path.stem not in used:
        raise BuildError(f"{where}: no EXAMPLES task calls '{path.stem}:'")
    renamed = [long for long, short in modules.items() if long != short]
    left = re.findall(rf"^.*\b(?:{'|'.join(renamed)})\b.*$", text, re.M)
    if left:
        raise BuildError(f"{where}: short module names left after rewriting: {left}")
    return text


def role_refs(text: str, roles: set[str]) -> str:
    """include_role/import_role `name:` and `- role:` entries -> `lifeboat.postgresql.<role>`."""
    alt = "|".join(sorted(roles))
    text = re.sub(
        rf"((?:ansible\.builtin\.)?(?:include|import)_role:\s*\n\s+name:[ \t]*)({alt})[ \t]*$",
        rf"\g<1>{FQ}.\g<2>",
        text,
        flags=re.M,
    )
    return re.sub(rf"^(\s*- role:[ \t]*)({alt})[ \t]*$", rf"\g<1>{FQ}.\g<2>", text, flags=re.M)


def build_roles(src: Path, tree: Path, modules: dict[str, str], roles: set[str]) -> None:
    shutil.copytree(src / "roles", tree / "roles", ignore=IGNORE)
    used: set[str] = set()
    for path in sorted((tree / "roles").rglob("*")):
        rel = path.relative_to(tree)
        kind = rel.parts[2] if len(rel.parts) > 2 else ""
        if kind == "library" and path.is_dir():
            shutil.rmtree(path)  # its modules are in plugins/modules now
        elif path.suffix == ".yml" and kind in ("tasks", "handlers"):
            text, seen = task_keys(path.read_text(), modules)
            used |= seen
            path.write_text(role_refs(text, roles))
        elif rel.parts[2:] == ("meta", "argument_specs.yml"):
            # Descriptions that name a module ("Runs the lifeboat_backup module ...").
            text = re.sub(
                rf"\b({'|'.join(modules)}) module\b",
                lambda m: f"{FQ}.{modules[m[1]]} module",
                path.read_text(),
            )
            path.write_text(text)
    unused = sorted(set(modules) - used)
    if unused:
        raise BuildError(f"roles/: no task calls the modules {unused}; were they renamed?")


def build_playbooks(src: Path, tree: Path, roles: set[str]) -> None:
    (tree / "playbooks").mkdir()
    for path in sorted((src / "playbooks").glob("*.yml")):
        where = f"playbooks/{path.name}"
        text = path.read_text()
        new = role_refs(text, roles)
        if new == text:
            raise BuildError(
                f"{where}: expected role references to rewrite to {FQ}.<role>, found none"
            )
        left = re.findall(
            rf"^\s*(?:- )?(?:role|name):[ \t]*(?:{'|'.join(roles)})[ \t]*$", new, re.M
        )
        if left:
            raise BuildError(f"{where}: short role names left after rewriting: {left}")
        # Comments: `ansible-playbook playbooks/backup.yml` -> `... lifeboat.postgresql.backup`.
        new = "".join(
            re.sub(r"\bplaybooks/(\w+)\.yml\b", rf"{FQ}.\g<1>", line)
            if line.lstrip().startswith("#")
            else line
            for line in new.splitlines(keepends=True)
        )
        (tree / "playbooks" / path.name).write_text(new)


def assemble(src: Path, build: Path) -> Path:
    tree = tree_of(build)
    sources = module_sources(src)
    modules = {name: collection_name(name) for name in sources}
    fragments = fragment_names(src)
    roles = {p.name for p in (src / "roles").iterdir() if (p / "tasks" / "main.yml").exists()}
    minor = core_minor(src)
    meta = project(src)
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)

    plugins = tree / "plugins"
    shutil.copytree(
        src / "module_utils" / "lifeboat", plugins / "module_utils" / "lifeboat", ignore=IGNORE
    )
    shutil.copytree(src / "doc_fragments", plugins / "doc_fragments", ignore=IGNORE)
    (plugins / "modules").mkdir()
    for long, short in sorted(modules.items()):
        text = build_module(src, sources[long], short, modules, fragments)
        (plugins / "modules" / f"{short}.py").write_text(text)
    build_roles(src, tree, modules, roles)
    build_playbooks(src, tree, roles)

    for name in ROLE_SOURCE_FILES:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, tree / name)
    shutil.copytree(src / "docs", tree / "docs", ignore=IGNORE)

    # ansible-test's ignore file is per ansible-core X.Y.
    sanity = tree / "tests" / "sanity"
    sanity.mkdir(parents=True)
    (sanity / f"ignore-{minor}.txt").write_text(
        "".join(
            f"plugins/modules/{short}.py validate-modules:missing-gplv3-license  # {GPL_REASON}\n"
            for short in sorted(modules.values())
        )
    )
    (tree / "meta").mkdir()
    (tree / "meta" / "runtime.yml").write_text(yaml_doc({"requires_ansible": f">={minor}.0"}))
    (tree / "galaxy.yml").write_text(
        yaml_doc(
            {
                "namespace": NAMESPACE,
                "name": NAME,
                "version": meta["version"],
                "readme": "README.md",
                "authors": ["lifeboat contributors"],
                "description": meta["description"],
                "license": [meta["license"]["text"]],
                "tags": ["postgresql", "backup", "restore", "database"],
                # Only ansible.builtin. Python: requirements/host.txt on hosts (the
                # lifeboat role installs it), README for the control node.
                "dependencies": {},
                "build_ignore": ["tests/output", "**/__pycache__", "*.pyc", ".pytest_cache"],
            }
        )
    )
    return tree


def tarball(src: Path, build: Path) -> Path:
    out = build / f"{NAMESPACE}-{NAME}-{project(src)['version']}.tar.gz"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "build", "--force",
         "--output-path", str(build), str(tree_of(build))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not out.exists():
        raise BuildError(f"ansible-galaxy collection build failed:\n{proc.stdout}{proc.stderr}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tarball", action="store_true", help="assemble the tree only")
    parser.add_argument("--source", type=Path, default=ROOT, help="repository to build from")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build", help="output directory")
    args = parser.parse_args()
    src, build = args.source.resolve(), args.build_dir.resolve()
    try:
        print(assemble(src, build))
        if not args.no_tarball:
            print(tarball(src, build))
    except (BuildError, OSError, KeyError) as exc:
        sys.stderr.write(
            f"Failed to build the {FQ} collection: {exc}. Fix the source, or teach "
            "tools/build_collection.py the new layout.\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
