"""module_utils/programs: every on-server program, its engines and its
command, and the onebox.platform.files entries that install it."""

from __future__ import annotations

import ast
import os
import posixpath

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.onebox.platform.plugins.filter.apps import program_files
from ansible_collections.onebox.platform.plugins.module_utils import programs
from ansible_collections.onebox.platform.plugins.module_utils.programs import PROGRAMS, ProgramError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
ENGINES = {name[:-3] for name in os.listdir(MODULE_UTILS) if name.endswith(".py") and name != "__init__.py"}
NAMES = sorted(PROGRAMS)

# Imports inside a function that the on-server programs never reach, so the
# engine is not installed with them: apps.normalize() (the controller's model
# check) calls _verification(), which imports verify; the programs only use
# apps' names and paths (COLOURS, NAME, STATE_ROOT, paths, backend_name...).
# A relative import would not even resolve in a flat install, so any new
# function-level import of a sibling must be listed here on purpose.
CONTROLLER_ONLY = {("apps", "verify")}


def by_path(entries):
    return {e["path"]: e for e in entries}


COLLECTION = "ansible_collections.onebox.platform.plugins.module_utils"


class _Imports(ast.NodeVisitor):
    def __init__(self, package_relative):
        self.package_relative = package_relative
        self.depth = 0
        self.found = set()

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, names):
        self.found |= {(n, self.depth == 0) for n in names if n in ENGINES}

    def visit_Import(self, node):
        names = [a.name.split(".")[0] for a in node.names]
        if self.package_relative:
            names += [
                a.name[len(COLLECTION) + 1 :].split(".")[0] for a in node.names if a.name.startswith(COLLECTION + ".")
            ]
        self._add(names)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        if node.level == 0:
            names = [module.split(".")[0]]
            if self.package_relative and module == COLLECTION:
                names += [a.name for a in node.names]
            elif self.package_relative and module.startswith(COLLECTION + "."):
                names += [module[len(COLLECTION) + 1 :].split(".")[0]]
        elif self.package_relative and node.level == 1:
            names = [module.split(".")[0]] if module else [a.name for a in node.names]
        else:
            names = []
        self._add(names)


def imported_engines(path, *, package_relative):
    """The engines of module_utils that the file at PATH imports anywhere in
    it, as (name, at_top): at_top when the import runs on loading the file
    (at the top, under try/if, in a class body), not inside a function.

    A program imports them as plain top-level modules (`import haproxy`,
    `from haproxy import X`), since they are installed flat or in lib/ on
    sys.path. An engine imports a sibling relatively (`from .haproxy import
    X`) or through the collection (`from ansible_collections.onebox.platform.
    plugins.module_utils import haproxy`); with PACKAGE_RELATIVE those count
    too (a plain `import haproxy` always does)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    visitor = _Imports(package_relative)
    visitor.visit(tree)
    return visitor.found


def test_imported_engines_sees_every_import_style(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "import haproxy\n"
        "from pitr import x\n"
        "from .health import probe\n"
        "from ansible_collections.onebox.platform.plugins.module_utils import traffic\n"
        "from ansible_collections.onebox.platform.plugins.module_utils.acme import y\n"
        "try:\n    import worker\nexcept ImportError:\n    worker = None\n"
        "def f():\n    from .verify import z\n"
        "class C:\n    def m(self):\n        import apps\n    import releases\n"
    )
    assert imported_engines(str(sample), package_relative=True) == {
        ("haproxy", True),
        ("pitr", True),
        ("health", True),
        ("traffic", True),
        ("acme", True),
        ("worker", True),
        ("verify", False),
        ("apps", False),
        ("releases", True),
    }
    assert imported_engines(str(sample), package_relative=False) == {
        ("haproxy", True),
        ("pitr", True),
        ("worker", True),
        ("apps", False),
        ("releases", True),
    }


@pytest.mark.parametrize("name", NAMES)
def test_every_engine_and_main_file_exists(name):
    prog = PROGRAMS[name]
    assert prog["engines"], name
    assert len(set(prog["engines"])) == len(prog["engines"]), f"{name} lists an engine twice"
    for engine in prog["engines"]:
        assert os.path.isfile(os.path.join(MODULE_UTILS, f"{engine}.py")), f"{name}: no engine {engine}"
    src, target = prog["main"]
    assert not os.path.isabs(src)
    assert os.path.isfile(os.path.join(ROOT, src)), f"{name}: no main file {src}"
    assert "/" not in target and target.endswith(".py")
    assert posixpath.isabs(prog["home"]) and posixpath.isabs(prog["command"])
    assert prog["lib"] in ("", "lib")
    assert prog["usage"]


def test_the_programs_do_not_overwrite_each_other():
    targets = {}
    for name in NAMES:
        for e in programs.files(name, ROOT):
            if e.get("state") != "directory":
                assert e["path"] not in targets, f"{name} and {targets.get(e['path'])} both write {e['path']}"
                targets[e["path"]] = name


@pytest.mark.parametrize("name", NAMES)
def test_files_puts_engines_under_home_lib_and_the_command_runs_the_main_file(name):
    prog = PROGRAMS[name]
    home = prog["home"]
    lib = f"{home}/{prog['lib']}" if prog["lib"] else home
    entries = programs.files(name, "/coll")
    paths = [e["path"] for e in entries]
    assert len(paths) == len(set(paths))
    assert entries[0] == dict(path=home, state="directory")
    if prog["lib"]:
        assert entries[1] == dict(path=lib, state="directory")
    dirs = [e["path"] for e in entries if e.get("state") == "directory"]
    assert dirs == ([home, lib] if prog["lib"] else [home])
    found = by_path(entries)
    for engine in prog["engines"]:
        assert found[f"{lib}/{engine}.py"] == dict(
            path=f"{lib}/{engine}.py", src=f"/coll/plugins/module_utils/{engine}.py"
        )
    src, target = prog["main"]
    main = f"{home}/{target}"
    assert found[main] == dict(path=main, src=f"/coll/{src}")
    # Every directory comes before the files in it.
    for i, e in enumerate(entries):
        parent = posixpath.dirname(e["path"])
        if parent in dirs:
            assert paths.index(parent) < i, f"{e['path']} comes before its directory"
    command = entries[-1]
    assert command["path"] == prog["command"]
    assert command["mode"] == "0755"
    assert "src" not in command
    lines = command["content"].splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[-1] == f'exec /usr/bin/python3 {main} "$@"'
    assert command["content"].endswith('"$@"\n')
    assert prog["usage"] in command["content"]
    assert len(entries) == len(dirs) + len(prog["engines"]) + 2


@pytest.mark.parametrize("name", NAMES)
def test_the_sources_of_the_entries_exist_in_the_collection(name):
    for e in programs.files(name, ROOT):
        if "src" in e:
            assert os.path.isfile(e["src"]), e


@pytest.mark.parametrize("name", NAMES)
def test_home_puts_everything_flat_with_no_lib(name):
    prog = PROGRAMS[name]
    entries = programs.files(name, "/coll", home="/tmp/probe")
    assert entries[0] == dict(path="/tmp/probe", state="directory")
    assert [e for e in entries if e.get("state") == "directory"] == [entries[0]]
    assert not any("/lib" in e["path"][len("/tmp/probe") :] for e in entries)
    for e in entries[1:-1]:
        assert posixpath.dirname(e["path"]) == "/tmp/probe", e
    assert sorted(posixpath.basename(e["path"]) for e in entries[1:-1]) == sorted(
        [f"{engine}.py" for engine in prog["engines"]] + [prog["main"][1]]
    )
    command = entries[-1]
    assert command["path"] == prog["command"]
    assert command["content"].splitlines()[-1] == f'exec /usr/bin/python3 /tmp/probe/{prog["main"][1]} "$@"'


@pytest.mark.parametrize("name", NAMES)
def test_command_false_leaves_the_command_out(name):
    prog = PROGRAMS[name]
    with_command = programs.files(name, "/coll")
    without = programs.files(name, "/coll", command=False)
    assert without == with_command[:-1]
    assert all("content" not in e for e in without)
    assert prog["command"] not in [e["path"] for e in without]
    flat = programs.files(name, "/coll", home="/tmp/probe", command=False)
    assert flat == programs.files(name, "/coll", home="/tmp/probe")[:-1]


def test_an_unknown_program_names_the_known_ones():
    with pytest.raises(ProgramError) as exc:
        programs.files("onebox-nope", "/coll")
    assert "'onebox-nope'" in str(exc.value)
    assert ", ".join(NAMES) in str(exc.value)
    with pytest.raises(ProgramError):
        programs.program("")
    # The filter turns it into a filter error with the same words.
    with pytest.raises(AnsibleFilterError) as exc:
        program_files("onebox-nope", "/coll")
    assert ", ".join(NAMES) in str(exc.value)
    assert program_files("onebox", "/coll", command=False) == programs.files("onebox", "/coll", command=False)


@pytest.mark.parametrize("name", NAMES)
def test_a_program_imports_only_the_engines_it_lists(name):
    """The main file's imports of engines and, transitively, the engines'
    imports of each other: each one must be installed with the program."""
    prog = PROGRAMS[name]
    listed = set(prog["engines"])
    main = os.path.join(ROOT, prog["main"][0])
    direct = imported_engines(main, package_relative=False)
    assert direct, f"{prog['main'][0]} imports no engine: the import style changed, this check sees nothing"
    missing = {e for e, _where in direct} - listed
    assert not missing, f"{prog['main'][0]} imports {sorted(missing)}, not in {name}'s engines"
    seen, todo = set(), [(e, prog["main"][0]) for e, _where in direct]
    while todo:
        engine, by = todo.pop()
        if engine in seen:
            continue
        seen.add(engine)
        assert engine in listed, f"{by} imports {engine}, which is not in {name}'s engines {sorted(listed)}"
        for sub, at_top in imported_engines(os.path.join(MODULE_UTILS, f"{engine}.py"), package_relative=True):
            if not at_top and (engine, sub) in CONTROLLER_ONLY:
                continue
            todo.append((sub, f"{engine}.py"))


def test_the_controller_only_imports_are_still_function_level_and_unused_by_the_programs():
    for engine, sub in CONTROLLER_ONLY:
        found = imported_engines(os.path.join(MODULE_UTILS, f"{engine}.py"), package_relative=True)
        assert (sub, False) in found and (sub, True) not in found, (engine, sub)
    for name in NAMES:
        with open(os.path.join(ROOT, PROGRAMS[name]["main"][0]), encoding="utf-8") as fh:
            source = fh.read()
        assert ".normalize(" not in source and "_verification" not in source, name


@pytest.mark.parametrize("name", NAMES)
def test_every_listed_engine_is_used(name):
    """An engine listed but imported by neither the main file nor another
    listed engine is installed for nothing."""
    prog = PROGRAMS[name]
    used = {e for e, _where in imported_engines(os.path.join(ROOT, prog["main"][0]), package_relative=False)}
    for engine in prog["engines"]:
        used |= {e for e, _where in imported_engines(os.path.join(MODULE_UTILS, f"{engine}.py"), package_relative=True)}
    assert set(prog["engines"]) <= used, f"{name} lists {sorted(set(prog['engines']) - used)} but nothing imports it"
