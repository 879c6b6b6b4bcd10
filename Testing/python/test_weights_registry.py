"""The model registry: the bundled file, its packaged copy, the override, and validation."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

import isegformer
from isegformer.weights import KINDS, RegistryError, load_registry
from isegformer.weights.registry import bundled_registry_path, parse_registry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CANONICAL = PROJECT_ROOT / "Resources" / "models.json"
PACKAGED = Path(isegformer.__file__).resolve().parent / "resources" / "models.json"


def test_packaged_copy_is_identical_to_the_canonical_registry():
    assert CANONICAL.read_bytes() == PACKAGED.read_bytes(), (
        "Logic/isegformer/resources/models.json must be a byte copy of Resources/models.json: "
        "cp Resources/models.json Logic/isegformer/resources/models.json"
    )


def test_bundled_registry_has_every_model_the_project_needs(monkeypatch):
    monkeypatch.delenv("ISEGFORMER_REGISTRY", raising=False)
    registry = load_registry()
    assert registry.source == bundled_registry_path()
    kinds = {entry.name: entry.kind for entry in registry}
    assert kinds["isegformer_swin_base_oaizib"] == "click_model"
    assert kinds["ritm_hrnet32_oaizib"] == "baseline_click_model"  # the click engine cannot run it
    assert kinds["stcn"] == "propagation"
    assert kinds["mivos_fusion"] == "fusion"
    assert kinds["oaizib_sample_image"] == "sample_volume"
    assert kinds["oaizib_sample_label"] == "sample_label"
    for entry in registry:
        assert entry.license and entry.paper, entry.name
    stcn = registry.get("stcn")
    assert "1mRrE0uCI2ktdWlUgapJI_KmgeIiF2eOm" in stcn.url
    assert any("1xdnNXD-5uGj3BoIMrh-0mwI4vCkU10nr" in url for url in stcn.mirrors)
    swin = registry.get("isegformer_swin_base_oaizib")
    assert swin.url.endswith("/" + swin.filename)


def test_bundled_registry_found_beside_the_package_when_not_packaged(tmp_path, monkeypatch):
    # A Slicer install: <module dir>/Resources/models.json beside the isegformer package.
    import isegformer.weights.registry as registry_module

    fake_pkg = tmp_path / "module" / "isegformer" / "weights"
    fake_pkg.mkdir(parents=True)
    (tmp_path / "module" / "Resources").mkdir()
    (tmp_path / "module" / "Resources" / "models.json").write_bytes(CANONICAL.read_bytes())
    monkeypatch.setattr(registry_module, "__file__", str(fake_pkg / "registry.py"))
    assert registry_module.bundled_registry_path() == tmp_path / "module" / "Resources" / \
        "models.json"


@pytest.mark.data
def test_sample_label_hash_matches_the_real_file(data_dir):
    entry = load_registry(CANONICAL).get("oaizib_sample_label")
    label = data_dir / "oaizib_label" / entry.filename
    if not label.is_file():
        pytest.skip(f"{label} is not in the sample data")
    assert hashlib.sha256(label.read_bytes()).hexdigest() == entry.sha256
    assert label.stat().st_size == entry.size


def test_environment_variable_replaces_the_registry(tmp_path, monkeypatch):
    data = json.loads(CANONICAL.read_text())
    data["models"] = data["models"][:1]
    data["models"][0]["url"] = "https://mirror.hospital.example/w.pth"
    path = tmp_path / "site.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(path))
    registry = load_registry()
    assert registry.source == path and len(registry) == 1
    assert registry.get("isegformer_swin_base_oaizib").url == data["models"][0]["url"]


def test_environment_variable_to_a_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(tmp_path / "nope.json"))
    with pytest.raises(RegistryError, match="ISEGFORMER_REGISTRY"):
        load_registry()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(Exception, match="stcn") as info:
        load_registry(CANONICAL).get("stcm")
    assert "isegformer models" in str(info.value)


def _valid() -> dict:
    return {"schema_version": 1, "models": [{
        "name": "m", "kind": "propagation", "version": "1", "filename": "m.pth",
        "url": "https://example.org/m.pth", "mirrors": [], "size": 10, "sha256": "ab" * 32,
        "license": "MIT", "paper": "p", "citation": "c"}]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["models"][0].pop("url"), "missing required field"),
    (lambda d: d["models"][0].update(kind="detector"), "kind"),
    (lambda d: d["models"][0].update(sha256="xyz"), "sha256"),
    (lambda d: d["models"][0].update(size=-1), "size"),
    (lambda d: d["models"][0].update(size=True), "size"),
    (lambda d: d["models"][0].update(url="ftp://example.org/m.pth"), "http"),
    (lambda d: d["models"][0].update(mirrors="https://x"), "mirrors"),
    (lambda d: d["models"][0].update(filename="../m.pth"), "filename"),
    (lambda d: d["models"][0].update(filename="m.pth.part"), "filename"),
    (lambda d: d["models"][0].update(name="Bad Name"), "name"),
    (lambda d: d["models"][0].update(extra=1), "unknown field"),
    (lambda d: d["models"].append(copy.deepcopy(d["models"][0])), "twice"),
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.update(models={}), "list"),
])
def test_invalid_registries_are_rejected_with_the_reason(change, message):
    data = _valid()
    parse_registry(data)  # the unchanged one is valid
    change(data)
    with pytest.raises(RegistryError, match=message):
        parse_registry(data, "test.json")


def test_hash_is_normalised_to_lower_case():
    data = _valid()
    data["models"][0]["sha256"] = "AB" * 32
    (entry,) = parse_registry(data)
    assert entry.sha256 == "ab" * 32
    assert entry.urls == ("https://example.org/m.pth",)


def test_broken_json_names_the_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema_version": 1,\n "models": [,]}')
    with pytest.raises(RegistryError, match="line 2"):
        load_registry(path)


def test_every_kind_in_the_bundled_registry_is_known():
    assert {entry.kind for entry in load_registry(CANONICAL)} <= set(KINDS)
