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
UI_FILE = ROOT / "Resources" / "UI" / "iSegFormerSlicer.ui"
ICON_FILE = ROOT / "Resources" / "Icons" / "iSegFormerSlicer.png"
SLICER_TESTS_DIR = ROOT / "Testing" / "Slicer"
HEAVY = ("torch", "timm", "isegformer")


def module_python_files() -> list[Path]:
    """The files Slicer's Python runs: the module and its self-test."""
    return sorted([*MODULE_DIR.rglob("*.py"), *SLICER_TESTS_DIR.rglob("*.py")])


def test_there_are_module_files():
    names = {p.name for p in module_python_files()}
    assert {"iSegFormerSlicer.py", "iSegFormerSlicerSelfTest.py"} <= names


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
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    forbidden = {"pip_install", "installDependencies", "installTorch", "_support", "missingDependencies",
                 "updateStatus", "downloadModels", "import_module"}
    for cls, method in (("iSegFormerSlicerWidget", "setup"), ("iSegFormerSlicerWidget", "__init__"),
                        ("iSegFormerSlicer", "__init__"), ("iSegFormerSlicerLogic", "__init__")):
        called = _called_names(_method(tree, cls, method))
        assert not (called & forbidden), f"{cls}.{method} calls {sorted(called & forbidden)}"


FAKE_SLICER = textwrap.dedent(
    """
    import sys, types

    class Anything:
        def __init__(self, *args, **kwargs): pass
        def __getattr__(self, name): return Anything()
        def __call__(self, *args, **kwargs): return Anything()

    def calldata_type(kind):
        def decorate(function):
            function.CallDataType = kind
            return function
        return decorate

    vtk = types.ModuleType("vtk")
    vtk.calldata_type = calldata_type
    vtk.VTK_INT = 6
    vtk.vtkMatrix4x4 = Anything
    qt = types.ModuleType("qt")
    qt.QIcon = lambda path: ("QIcon", path)
    ctk = types.ModuleType("ctk")
    slicer = types.ModuleType("slicer")
    slicer.app = Anything()
    slicer.mrmlScene = Anything()
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    class Base:
        def __init__(self, *args, **kwargs):
            self.parent = args[0] if args else None
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (Base,), {}))
    util = types.ModuleType("slicer.util")
    class VTKObservationMixin:
        def __init__(self): pass
    util.VTKObservationMixin = VTKObservationMixin
    slicer.ScriptedLoadableModule = slm
    slicer.util = util
    sys.modules.update({"vtk": vtk, "qt": qt, "ctk": ctk, "slicer": slicer,
                        "slicer.ScriptedLoadableModule": slm, "slicer.util": util})
    """
)


def test_importing_the_module_loads_no_torch_and_no_package():
    script = FAKE_SLICER + textwrap.dedent(
        f"""
        sys.path.insert(0, {str(MODULE_DIR)!r})
        sys.path.insert(0, {str(ROOT / "Logic")!r})
        before = set(sys.modules)
        import iSegFormerSlicer as m

        class Parent:
            pass
        parent = Parent()
        m.iSegFormerSlicer(parent)
        print("ICON", parent.icon[1])
        m.iSegFormerSlicerLogic()
        m.iSegFormerSlicerWidget(None)
        names = m.iSegFormerSlicerLogic.clickModelNames()
        assert names[0] == m.DEFAULT_MODEL, names
        new = set(sys.modules) - before
        heavy = sorted(n for n in new if n.split(".")[0] in ("torch", "timm", "isegformer", "SimpleITK"))
        print("HEAVY", heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout
    assert f"ICON {ICON_FILE}" in result.stdout, result.stdout  # found in the source checkout


def test_ui_parses_and_names_every_widget_the_code_uses():
    tree = ElementTree.parse(UI_FILE)
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
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
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


# ---- where the module finds its resources ------------------------------------------------------


def test_resources_are_found_in_the_source_checkout():
    """Slicer pointed at iSegFormerSlicer/ (additional module path): Resources/ is one folder up."""
    from slicer_fakes import fake_slicer_module

    with fake_slicer_module() as (module, scene):
        assert Path(module.moduleResourcePath("UI/iSegFormerSlicer.ui")) == UI_FILE
        assert Path(module.moduleResourcePath("Icons/iSegFormerSlicer.png")) == ICON_FILE


def test_resources_beside_the_module_win_and_a_missing_one_names_the_built_place(tmp_path):
    from slicer_fakes import fake_slicer_module

    module_dir = tmp_path / "checkout" / "iSegFormerSlicer"
    module_dir.mkdir(parents=True)
    (module_dir / "iSegFormerSlicer.py").write_bytes(MODULE_FILE.read_bytes())
    for folder, content in ((module_dir, "built"), (module_dir.parent, "checkout")):
        (folder / "Resources" / "UI").mkdir(parents=True)
        (folder / "Resources" / "UI" / "iSegFormerSlicer.ui").write_text(content)
    with fake_slicer_module(module_dir / "iSegFormerSlicer.py") as (module, scene):
        assert Path(module.moduleResourcePath("UI/iSegFormerSlicer.ui")).read_text() == "built"
        (module_dir / "Resources" / "UI" / "iSegFormerSlicer.ui").unlink()
        assert Path(module.moduleResourcePath("UI/iSegFormerSlicer.ui")).read_text() == "checkout"
        assert Path(module.moduleResourcePath("UI/other.ui")) == module_dir / "Resources" / "UI" / "other.ui"


def test_the_widget_loads_the_ui_file_of_the_repository():
    from slicer_fakes import fake_slicer_widget

    with fake_slicer_widget() as (module, scene, ui):
        widget = module.iSegFormerSlicerWidget(None)
        widget.setup()
        added = [args[0] for name, args in widget.layout.calls if name == "addWidget"]
        assert [Path(w.path) for w in added] == [UI_FILE]
        widget.cleanup()
