"""The extension's CMake files, read without CMake or Slicer.

A small reader follows the commands these files use (set, list, foreach, file(GLOB_RECURSE),
configure_file, install, add_subdirectory, the Slicer macros) and records which source files
they name and where the build tree gets each one. Moving a file without updating CMake then
fails here instead of in a Slicer build nobody runs locally.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = "/<build>"  # the build tree; paths below it are outputs, never checked as sources
INSTALL = "/<install>"
SCRIPTED_MODULES = "lib/Slicer-5.10/qt-scripted-modules"  # Slicer_QTSCRIPTEDMODULES_LIB_DIR
MODULE_BUILD_DIR = f"{BUILD}/{SCRIPTED_MODULES}"
MODULE_INSTALL_DIR = f"{INSTALL}/{SCRIPTED_MODULES}"
IGNORED = {"cmake_minimum_required", "project", "find_package", "include", "if", "else", "elseif",
           "endif", "set_property", "message"}


def tokenize(text: str) -> list[tuple[str, list[str]]]:
    """CMake commands as (lower-case name, arguments); quotes removed, comments dropped."""
    commands, i = [], 0
    while i < len(text):
        if text[i] == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        match = re.compile(r"[A-Za-z_]\w*").match(text, i)
        if not match:
            i += 1
            continue
        name, i = match.group(0).lower(), match.end()
        while text[i].isspace():
            i += 1
        assert text[i] == "(", f"expected '(' after {name}"
        args, depth, i = [], 1, i + 1
        while depth:
            char = text[i]
            if char == '"':
                end = text.index('"', i + 1)
                args.append(text[i + 1:end])
                i = end + 1
            elif char == "#":
                i = text.index("\n", i)
            elif char in "()":
                depth += 1 if char == "(" else -1
                i += 1
            elif char.isspace():
                i += 1
            else:
                token = re.compile(r'[^\s()"#]+').match(text, i)
                args.append(token.group(0))
                i = token.end()
        commands.append((name, args))
    return commands


@dataclass
class Extension:
    """What the CMake files name (sources) and produce (build tree and install tree)."""

    sources: list[tuple[Path, str]] = field(default_factory=list)  # (file, the command naming it)
    build_tree: dict[str, Path] = field(default_factory=dict)  # build path -> source file
    installed: dict[str, Path] = field(default_factory=dict)  # install path -> source file
    globs: dict[str, list[str]] = field(default_factory=dict)  # pattern -> matches
    tests: list[Path] = field(default_factory=list)  # scripts given to slicer_add_python_unittest
    module_resources: list[str] = field(default_factory=list)  # RESOURCES of the scripted module


class Reader:
    def __init__(self):
        self.extension = Extension()

    def read(self, folder: Path, variables: dict[str, str]) -> None:
        binary = BUILD if folder == ROOT else f"{BUILD}/{folder.relative_to(ROOT).as_posix()}"
        variables = {**variables, "CMAKE_CURRENT_SOURCE_DIR": str(folder), "CMAKE_CURRENT_BINARY_DIR": binary}
        self._run(tokenize((folder / "CMakeLists.txt").read_text(encoding="utf-8")), variables, folder)

    def _expand(self, text: str, variables: dict[str, str]) -> str:
        previous = None
        while previous != text:
            previous = text
            text = re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)
        return text

    def _args(self, args: list[str], variables: dict[str, str]) -> list[str]:
        expanded = []
        for arg in args:
            expanded.extend(item for item in self._expand(arg, variables).split(";") if item)
        return expanded

    def _source(self, path: str, folder: Path, command: str) -> Path | None:
        """A path relative to the current source folder; None for build-tree paths."""
        if path.startswith(BUILD) or path.startswith(INSTALL):
            return None
        assert "${" not in path, f"{command}: unknown variable in {path}"
        resolved = Path(os.path.normpath(folder / path))
        self.extension.sources.append((resolved, command))
        return resolved

    def _origin(self, path: str, folder: Path, command: str) -> Path | None:
        """The source file behind a path that may be a configure_file output."""
        if path in self.extension.build_tree:
            return self.extension.build_tree[path]
        return self._source(path, folder, command)

    def _run(self, commands, variables: dict[str, str], folder: Path) -> None:
        i = 0
        while i < len(commands):
            name, raw = commands[i]
            i += 1
            if name == "foreach":
                depth, body = 1, []
                while depth:
                    body.append(commands[i])
                    depth += {"foreach": 1, "endforeach": -1}.get(commands[i][0], 0)
                    i += 1
                body.pop()  # endforeach
                loop_var = raw[0]
                if raw[1:3] == ["IN", "LISTS"]:
                    items = [x for list_name in raw[3:] for x in variables.get(list_name, "").split(";") if x]
                else:
                    items = self._args(raw[1:], variables)
                for item in items:  # foreach opens no scope: what the body sets stays set
                    variables[loop_var] = item
                    self._run(body, variables, folder)
                continue
            self._command(name, raw, variables, folder)

    def _command(self, name: str, raw: list[str], variables: dict[str, str], folder: Path) -> None:
        args = self._args(raw, variables)
        extension = self.extension
        if name in IGNORED:
            return
        if name == "set":
            variables[raw[0]] = ";".join(args[1:])
        elif name == "list" and args[0] == "APPEND":
            variables[raw[1]] = ";".join(filter(None, [variables.get(raw[1], ""), *args[2:]]))
        elif name == "get_filename_component" and args[2] == "DIRECTORY":
            variables[raw[0]] = os.path.dirname(args[1])
        elif name == "file" and args[0] == "GLOB_RECURSE":
            out, rest = raw[1], args[2:]
            relative = None
            if rest[0] == "RELATIVE":
                relative, rest = Path(rest[1]), rest[2:]
            patterns = [p for p in rest if p != "CONFIGURE_DEPENDS"]
            matches = []
            for pattern in patterns:
                base, _, glob = pattern.partition("/*")
                found = sorted(Path(base).rglob("*" + glob))
                extension.globs[pattern] = [str(p) for p in found]
                matches += [str(p.relative_to(relative)) if relative else str(p) for p in found]
            variables[out] = ";".join(matches)
        elif name == "configure_file":
            source = self._origin(args[0], folder, name)
            extension.build_tree[args[1]] = source
        elif name == "install" and args[0] == "FILES":
            files = args[1:args.index("DESTINATION")]
            destination = args[args.index("DESTINATION") + 1].rstrip("/")
            for file in files:
                extension.installed[f"{destination}/{Path(file).name}"] = self._origin(file, folder, name)
        elif name == "add_subdirectory":
            self._source(f"{args[0]}/CMakeLists.txt", folder, name)
            self.read(Path(os.path.normpath(folder / args[0])), variables)
        elif name in ("slicer_add_python_unittest", "slicer_add_python_test"):
            script = args[args.index("SCRIPT") + 1]
            extension.tests.append(self._source(script, folder, name))
        elif name == "slicermacrobuildscriptedmodule":
            self._scripted_module(args, variables, folder)
        else:
            raise AssertionError(f"the reader does not know the command {name}(): teach it, or keep CMake simple")

    def _scripted_module(self, args: list[str], variables: dict[str, str], folder: Path) -> None:
        """slicerMacroBuildScriptedModule: scripts and resources go to <qt-scripted-modules>/."""
        keywords = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}
        lists, current = {}, None
        for arg in args:
            if arg in keywords:
                current = arg
                lists.setdefault(arg, [])
            else:
                lists[current].append(arg)
        binary = variables["CMAKE_CURRENT_BINARY_DIR"]
        for script in lists.get("SCRIPTS", []):
            script = script if script.endswith(".py") else script + ".py"
            if script.startswith(BUILD):  # an earlier configure_file output, placed by its relative path
                target = f"{MODULE_BUILD_DIR}/{os.path.relpath(script, binary)}"
                self.extension.build_tree[target] = self.extension.build_tree[script]
            else:
                self.extension.build_tree[f"{MODULE_BUILD_DIR}/{script}"] = self._source(script, folder, "SCRIPTS")
        for resource in lists.get("RESOURCES", []):
            self.extension.module_resources.append(resource)
            self.extension.build_tree[f"{MODULE_BUILD_DIR}/{resource}"] = self._source(resource, folder, "RESOURCES")


@pytest.fixture(scope="module")
def extension() -> Extension:
    reader = Reader()
    reader.read(ROOT, {
        "PROJECT_SOURCE_DIR": str(ROOT), "CMAKE_SOURCE_DIR": str(ROOT), "CMAKE_BINARY_DIR": BUILD,
        "Slicer_QTSCRIPTEDMODULES_LIB_DIR": SCRIPTED_MODULES, "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR": MODULE_INSTALL_DIR,
    })
    return reader.extension


def module_files(tree: dict[str, Path], base: str) -> dict[str, Path]:
    """The part of a tree under the module folder, by path relative to it."""
    return {path[len(base) + 1:]: source for path, source in tree.items() if path.startswith(base + "/")}


def test_every_file_the_cmake_files_name_exists(extension):
    missing = sorted(f"{command}: {path.relative_to(ROOT)}" for path, command in extension.sources if not path.is_file())
    assert not missing, f"CMake names files that do not exist: {missing}"
    assert len(extension.sources) > 10  # the reader did read the files


def test_the_package_globs_find_the_package(extension):
    assert extension.globs, "the module no longer copies Logic/isegformer?"
    for pattern, matches in extension.globs.items():
        assert matches, f"{pattern} matches nothing"
    scripts = module_files(extension.build_tree, MODULE_BUILD_DIR)
    assert scripts["isegformer/__init__.py"] == ROOT / "Logic" / "isegformer" / "__init__.py"
    assert scripts["isegformer/slicer_support/views.py"] == ROOT / "Logic" / "isegformer" / "slicer_support" / "views.py"


def test_every_file_of_the_module_package_is_built_with_the_module(extension):
    """Slicer imports iSegFormerSlicerLib from beside iSegFormerSlicer.py: a file CMake misses
    works in a source checkout and fails in the built extension (the scripted-module macro
    installs what it builds)."""
    built = module_files(extension.build_tree, MODULE_BUILD_DIR)
    package = ROOT / "iSegFormerSlicer" / "iSegFormerSlicerLib"
    sources = sorted(p.relative_to(ROOT / "iSegFormerSlicer").as_posix() for p in package.rglob("*.py"))
    assert {"iSegFormerSlicerLib/__init__.py", "iSegFormerSlicerLib/logic.py", "iSegFormerSlicerLib/widget.py"} <= set(sources)
    for relative in sources:
        assert built[relative] == ROOT / "iSegFormerSlicer" / relative, relative


def test_module_resources_are_given_inside_the_module_folder(extension):
    """ctkMacroCompilePythonScript copies RESOURCES to <module build dir>/<path as given>."""
    for resource in extension.module_resources:
        assert not os.path.isabs(resource) and not resource.startswith(".."), resource


def test_the_built_module_has_its_resources_where_slicer_and_the_package_look(extension):
    built = module_files(extension.build_tree, MODULE_BUILD_DIR)
    assert built["iSegFormerSlicer.py"] == ROOT / "iSegFormerSlicer" / "iSegFormerSlicer.py"
    # ScriptedLoadableModule.resourcePath() and the module icon: <module dir>/Resources/...
    assert built["Resources/UI/iSegFormerSlicer.ui"] == ROOT / "Resources" / "UI" / "iSegFormerSlicer.ui"
    assert built["Resources/Icons/iSegFormerSlicer.png"] == ROOT / "Resources" / "Icons" / "iSegFormerSlicer.png"
    # isegformer.weights.registry: <package parent>/Resources/models.json, and the package's own copy
    assert built["Resources/models.json"] == ROOT / "Resources" / "models.json"
    assert built["isegformer/resources/models.json"] == ROOT / "Logic" / "isegformer" / "resources" / "models.json"


def test_the_resources_are_installed_beside_the_module(extension):
    installed = module_files(extension.installed, MODULE_INSTALL_DIR)
    for name in ("Resources/UI/iSegFormerSlicer.ui", "Resources/Icons/iSegFormerSlicer.png", "Resources/models.json"):
        assert installed[name] == ROOT / name


def test_the_self_test_is_registered_from_testing_slicer(extension):
    assert ROOT / "Testing" / "Slicer" / "iSegFormerSlicerSelfTest.py" in extension.tests
    assert ROOT / "iSegFormerSlicer" / "iSegFormerSlicer.py" in extension.tests  # the module's own test
    names = [p.name.lower() for p in (ROOT / "Testing").iterdir()]
    assert len(names) == len(set(names)), "Testing/ has folders that differ only in case"


def test_the_extension_icon_url_names_a_file_of_the_repository():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = re.search(rf'set\({key}\s+"([^"]*)"\)', cmake).group(1)
        path = url.split("/main/", 1)[1]
        assert (ROOT / path).is_file(), f"{key} points at {path}, which is not in the repository"


def test_a_build_tree_laid_out_as_cmake_says_works(extension, tmp_path):
    """Lay out the build tree's module folder as the CMake files say, then use it: the module
    finds its .ui and icon there, and the package finds its registry beside itself."""
    import slicer_standins

    if not slicer_standins.available():
        pytest.skip(slicer_standins.SKIP_REASON)
    module_dir = tmp_path / SCRIPTED_MODULES
    for relative, source in module_files(extension.build_tree, MODULE_BUILD_DIR).items():
        (module_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, module_dir / relative)
    slicer_standins.new_scene()
    try:
        module = slicer_standins.import_module(module_dir)
        lib = sys.modules["iSegFormerSlicerLib"]
        assert Path(lib.__file__).parent == module_dir / "iSegFormerSlicerLib"  # the copy, not the source tree
        icon = module_dir / "Resources" / "Icons" / "iSegFormerSlicer.png"
        assert Path(lib.moduleResourcePath("Icons/iSegFormerSlicer.png")) == icon
        widget = slicer_standins.build_module_widget(module.iSegFormerSlicerWidget)
        loaded = [w.uiFile for w in widget.layout.widgets]
        assert loaded == [str(module_dir / "Resources" / "UI" / "iSegFormerSlicer.ui")]
        widget.cleanup()
    finally:
        slicer_standins.import_module()  # the source tree's module again, for the tests after this one

    (module_dir / "isegformer" / "resources" / "models.json").unlink()  # only Resources/models.json left
    # The package of the build tree, not the one the test environment has installed (editable).
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        package = {str(module_dir / "isegformer")!r}
        spec = importlib.util.spec_from_file_location(
            "isegformer", package + "/__init__.py", submodule_search_locations=[package])
        sys.modules["isegformer"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        import isegformer.weights.registry as registry
        assert registry.__file__.startswith(package), registry.__file__
        print(registry.bundled_registry_path())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "ISEGFORMER_REGISTRY"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == (module_dir / "Resources" / "models.json").resolve()
