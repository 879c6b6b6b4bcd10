"""The Slicer module's model list and status follow the package's registry (review R5a item 6):
``ISEGFORMER_REGISTRY`` replaces the bundled registry in Slicer too, only click models the
engine can load are offered, and a name the registry lacks is an error, never "ready".
Real MRML scene (slicer-core), the module imported from the source tree."""
from __future__ import annotations

import json

import pytest


def site_registry(tmp_path, monkeypatch, entries):
    path = tmp_path / "site.json"
    base = {"version": "t", "url": "https://example.org/x", "mirrors": [], "size": None,
            "sha256": None, "license": "t", "paper": "t", "citation": "t"}
    path.write_text(json.dumps({"schema_version": 1, "models": [
        dict(base, name=name, kind=kind, filename=f"{name}.pth") for name, kind in entries]}))
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(path))
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))
    return path


def test_the_model_list_is_the_site_registrys_click_models(slicer_env, tmp_path, monkeypatch):
    site_registry(tmp_path, monkeypatch, [("site_click", "click_model"), ("stcn", "propagation"),
                                          ("old_cnn", "baseline_click_model")])
    logic = slicer_env.module.iSegFormerSlicerLogic
    assert logic.clickModelNames() == ["site_click"]


def test_the_bundled_list_offers_no_model_the_click_engine_cannot_run(slicer_env, monkeypatch):
    monkeypatch.delenv("ISEGFORMER_REGISTRY", raising=False)
    names = slicer_env.module.iSegFormerSlicerLogic.clickModelNames()
    assert names[0] == "isegformer_swin_base_oaizib"
    assert "ritm_hrnet32_oaizib" not in names


def test_a_click_model_missing_from_the_registry_is_reported_not_ready(slicer_env, tmp_path, monkeypatch):
    site_registry(tmp_path, monkeypatch, [("site_click", "click_model"), ("stcn", "propagation")])
    logic = slicer_env.module.iSegFormerSlicerLogic()
    try:
        logic.setModelSettings(model="isegformer_swin_base_oaizib")
        text = logic.modelStatusText()
        assert "not in the model registry" in text and "site_click" in text
        assert "ready" not in text.lower()
        logic.setModelSettings(model="stcn")  # an entry, but not a click model
        assert "not a click model" in logic.modelStatusText()
        logic.setModelSettings(model="site_click")
        assert logic.modelStatusText().startswith("Not downloaded yet")
    finally:
        logic.shutdown()


@pytest.mark.parametrize("name", ["weights.pkl", "my_model.bin"])
def test_any_weights_file_name_is_a_path_and_a_missing_one_is_said(slicer_env, tmp_path, name):
    logic = slicer_env.module.iSegFormerSlicerLogic()
    try:
        missing = str(tmp_path / name)
        logic.setModelSettings(model=missing)
        assert logic.modelStatusText().startswith("No checkpoint file at")
        (tmp_path / name).write_bytes(b"PK")
        assert logic.modelStatusText().startswith("Checkpoint file")
        logic.setModelSettings(model=name)  # a bare file name with a weights suffix is a path too
        assert "registry" not in logic.modelStatusText()
    finally:
        logic.shutdown()
