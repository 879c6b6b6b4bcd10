"""The Slicer module's files, checked without Slicer: syntax, lazy imports, UI names, packaging."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "iSegFormerSlicer"
MODULE_FILE = MODULE_DIR / "iSegFormerSlicer.py"
LIB_DIR = MODULE_DIR / "iSegFormerSlicerLib"
STANDINS_DIR = ROOT / "Testing" / "python"
UI_FILE = ROOT / "Resources" / "UI" / "iSegFormerSlicer.ui"
ICON_FILE = ROOT / "Resources" / "Icons" / "iSegFormerSlicer.png"
SLICER_TESTS_DIR = ROOT / "Testing" / "Slicer"
HEAVY = ("torch", "timm", "isegformer")


def module_python_files() -> list[Path]:
    """The files Slicer's Python runs: the module and its self-test."""
    return sorted([*MODULE_DIR.rglob("*.py"), *SLICER_TESTS_DIR.rglob("*.py")])


def test_there_are_module_files():
    names = {p.relative_to(ROOT).as_posix() for p in module_python_files()}
    assert {"iSegFormerSlicer/iSegFormerSlicer.py", "Testing/Slicer/iSegFormerSlicerSelfTest.py",
            "iSegFormerSlicer/iSegFormerSlicerLib/logic.py", "iSegFormerSlicer/iSegFormerSlicerLib/widget.py"} <= names


def test_the_module_file_is_small_and_re_exports_the_conventional_names():
    """Slicer looks up <Module>Widget, <Module>Logic and <Module>Test in the module file."""
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert len(source.splitlines()) < 80
    tree = ast.parse(source)
    imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert {"iSegFormerSlicerWidget", "iSegFormerSlicerLogic", "iSegFormerSlicerTest"} <= imported
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)] == ["iSegFormerSlicer"]


QT_FREE = ("logic.py", "clicks.py", "geometry.py", "models.py", "jobs.py", "finetune.py", "parameters.py",
           "__init__.py", "sample_data.py")


@pytest.mark.parametrize("name", QT_FREE)
def test_the_logic_and_what_it_uses_import_no_qt(name):
    """Anywhere in the file, not only at the top: the Logic runs on slicer-core, which has no Qt."""
    tree = ast.parse((LIB_DIR / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for imported in names:
            assert imported.split(".")[0] not in ("qt", "ctk"), f"{name} imports {imported}"


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_with_python_312_grammar(path):
    source = path.read_text(encoding="utf-8")
    ast.parse(source, filename=str(path), feature_version=(3, 12))
    compile(source, str(path), "exec")


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_heavy_import_at_module_level(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:  # top-level statements only; imports inside functions are lazy
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name} at load time"


def _method(tree: ast.Module, class_name: str, method: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return item
    raise AssertionError(f"{class_name}.{method} not found")


def _called_names(function: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            target = node.func
            names.add(target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", ""))
    return names


def test_setup_and_constructors_install_and_import_nothing():
    forbidden = {"pip_install", "installDependencies", "installTorch", "support", "missingDependencies",
                 "updateStatus", "downloadModels", "import_module", "warmUpInBackground", "_warmUp"}
    for path, cls, method in ((LIB_DIR / "widget.py", "iSegFormerSlicerWidget", "setup"),
                              (LIB_DIR / "widget.py", "iSegFormerSlicerWidget", "__init__"),
                              (MODULE_FILE, "iSegFormerSlicer", "__init__"),
                              (LIB_DIR / "logic.py", "iSegFormerSlicerLogic", "__init__")):
        called = _called_names(_method(ast.parse(path.read_text(encoding="utf-8")), cls, method))
        assert not (called & forbidden), f"{cls}.{method} calls {sorted(called & forbidden)}"


def _run_on_slicer_core(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python with Slicer's wheel and the stand-ins installed."""
    import slicer_standins

    if not slicer_standins.available():
        pytest.skip(slicer_standins.SKIP_REASON)
    prelude = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(STANDINS_DIR)!r})
        sys.path.insert(0, {str(ROOT / "Logic")!r})
        """
    )
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)


def test_importing_the_module_loads_no_torch_and_of_the_package_only_its_registry_reader():
    result = _run_on_slicer_core(
        f"""
        import slicer_standins
        slicer = slicer_standins.install()
        before = set(sys.modules)
        m = slicer_standins.import_module()

        class Parent:
            path = {str(MODULE_FILE)!r}
        parent = Parent()
        m.iSegFormerSlicer(parent)
        print("ICON", parent.icon.path)
        m.iSegFormerSlicerLogic()
        slicer_standins.build_module_widget(m.iSegFormerSlicerWidget)
        names = m.iSegFormerSlicerLogic.clickModelNames()
        assert names[0] == m.DEFAULT_MODEL, names
        new = set(sys.modules) - before
        light = {"isegformer", "isegformer.errors", "isegformer.json_io", "isegformer.weights", "isegformer.weights.registry"}
        heavy = sorted(n for n in new if n.split(".")[0] in ("torch", "timm", "isegformer", "SimpleITK", "requests") and n not in light)
        print("HEAVY", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout
    assert f"ICON {ICON_FILE}" in result.stdout, result.stdout  # found in the source checkout


def test_the_logic_runs_on_slicer_core_with_no_qt_at_all():
    """``import qt`` fails in this process: the Logic still loads, and works on real MRML."""
    result = _run_on_slicer_core(
        f"""
        sys.modules["qt"] = None  # any "import qt" now raises ImportError
        sys.modules["ctk"] = None
        import numpy as np
        import slicer_standins
        slicer = slicer_standins.install()
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from iSegFormerSlicerLib.logic import iSegFormerSlicerLogic
        volume = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), np.int16), np.diag([0.5, 0.6, 2.0, 1.0]))
        logic = iSegFormerSlicerLogic()
        logic.setVolume(volume)
        segmentation, segment = logic.setSegmentation()
        point = logic.locateClick((1.0, 1.2, 4.0), axis=0)
        print("POINT", point.axis, point.index, logic.parameters.sourceVolume.GetID() == volume.GetID())
        print("QT", sorted(n for n in sys.modules if n.split(".")[0] in ("qt", "ctk") and sys.modules[n] is not None))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "POINT 0 2 True" in result.stdout, result.stdout
    assert "QT []" in result.stdout, result.stdout


def test_ui_parses_and_names_every_widget_the_code_uses():
    tree = ElementTree.parse(UI_FILE)
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    used = set()
    for path in LIB_DIR.rglob("*.py"):
        used |= set(re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui names?"
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used in code but absent from the .ui: {missing}"
    assert widgets["segmentEditorWidget"] == "qMRMLSegmentEditorWidget"
    assert widgets["positivePlaceWidget"] == widgets["negativePlaceWidget"] == "qSlicerMarkupsPlaceWidget"
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    custom = {cls for cls in widgets.values() if cls and not cls.startswith("Q")}
    assert custom <= declared, f"custom widgets without a <customwidget> entry: {sorted(custom - declared)}"


def _s4ext() -> dict[str, str]:
    values = {}
    for line in (ROOT / "iSegFormerSlicer.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            values[key] = value.strip()
    return values


def test_dependency_on_pytorch_is_declared_the_same_everywhere():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    cmake_depends = re.search(r'set\(EXTENSION_DEPENDS\s+"([^"]*)"\)', cmake).group(1).split()
    catalog = json.loads((ROOT / "iSegFormerSlicer.json").read_text(encoding="utf-8"))
    s4ext = _s4ext()
    assert cmake_depends == ["PyTorch"]
    assert s4ext["depends"].split() == cmake_depends
    assert catalog["build_dependencies"] == cmake_depends
    assert catalog["scm_url"] == s4ext["scmurl"]
    assert catalog["category"] == s4ext["category"]
    cmake_category = re.search(r'set\(EXTENSION_CATEGORY\s+"([^"]*)"\)', cmake).group(1)
    assert cmake_category == catalog["category"]


def test_catalog_entry_follows_the_current_schema():
    catalog = json.loads((ROOT / "iSegFormerSlicer.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(catalog) <= allowed
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#$", catalog["$schema"])
    assert 1 <= catalog["tier"] <= 5


def test_icon_is_a_real_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128)


def test_the_slicer_support_helpers_import_without_torch():
    """The Logic imports these on the GUI thread before any dependency is installed."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT / "Logic")!r})
        import isegformer.slicer_support.dependencies, isegformer.slicer_support.session_bridge
        import isegformer.slicer_support.slice_write, isegformer.slicer_support.transforms
        import isegformer.slicer_support.views, isegformer.slicer_support.worker
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "SimpleITK", "skimage")))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


# ---- where the module finds its resources ------------------------------------------------------


def test_resources_are_found_in_the_source_checkout():
    """Slicer pointed at iSegFormerSlicer/ (additional module path): Resources/ is one folder up."""
    sys.path.insert(0, str(MODULE_DIR))
    try:
        import iSegFormerSlicerLib as lib
    finally:
        sys.path.remove(str(MODULE_DIR))
    assert Path(lib.moduleResourcePath("UI/iSegFormerSlicer.ui")) == UI_FILE
    assert Path(lib.moduleResourcePath("Icons/iSegFormerSlicer.png")) == ICON_FILE


def test_resources_beside_the_module_win_and_a_missing_one_names_the_built_place(tmp_path):
    import shutil

    module_dir = tmp_path / "checkout" / "iSegFormerSlicer"
    shutil.copytree(LIB_DIR, module_dir / "iSegFormerSlicerLib", ignore=shutil.ignore_patterns("__pycache__"))
    for folder, content in ((module_dir, "built"), (module_dir.parent, "checkout")):
        (folder / "Resources" / "UI").mkdir(parents=True)
        (folder / "Resources" / "UI" / "iSegFormerSlicer.ui").write_text(content)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(module_dir)!r})
        import iSegFormerSlicerLib as lib
        assert lib.__file__.startswith({str(module_dir)!r}), lib.__file__
        print("FIRST", open(lib.moduleResourcePath("UI/iSegFormerSlicer.ui")).read())
        import os
        os.unlink({str(module_dir / "Resources" / "UI" / "iSegFormerSlicer.ui")!r})
        print("SECOND", open(lib.moduleResourcePath("UI/iSegFormerSlicer.ui")).read())
        print("MISSING", lib.moduleResourcePath("UI/other.ui"))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "FIRST built" in result.stdout and "SECOND checkout" in result.stdout
    assert f"MISSING {module_dir / 'Resources' / 'UI' / 'other.ui'}" in result.stdout


def test_the_widget_loads_the_ui_file_of_the_repository(slicer_env):
    import slicer_standins

    widget = slicer_standins.build_module_widget(slicer_env.module.iSegFormerSlicerWidget)
    assert [Path(w.uiFile) for w in widget.layout.widgets] == [UI_FILE]
    widget.cleanup()
