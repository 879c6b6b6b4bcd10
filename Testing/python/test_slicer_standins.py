"""The stand-ins add only what slicer-core lacks: everything MRML is Slicer's own."""
from __future__ import annotations

import numpy as np
import pytest


def test_the_scene_nodes_and_logics_are_slicers_own(slicer_env):
    slicer, scene = slicer_env.slicer, slicer_env.scene
    assert type(scene).__module__.startswith("slicer_core")
    for key in ("segmentations", "markups", "volumes", "colors"):
        assert type(getattr(slicer.modules, key).logic()).__module__.startswith("slicer_core"), key
    assert slicer.util.__file__.endswith("slicer/util.py") and "site-packages" in slicer.util.__file__
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert segmentation.GetClassName() == "vtkMRMLSegmentationNode"
    assert points.GetClassName() == "vtkMRMLMarkupsFiducialNode"
    assert slicer.app.applicationLogic().GetInteractionNode().GetClassName() == "vtkMRMLInteractionNode"


def test_each_test_gets_a_fresh_scene(slicer_env):
    slicer = slicer_env.slicer
    assert slicer.mrmlScene is slicer_env.scene
    assert not slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
    slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.int16))


def test_the_io_manager_loads_through_slicers_readers(slicer_env, data_dir, tmp_path):
    slicer = slicer_env.slicer
    volume = slicer.util.loadVolume(str(data_dir / "radiomics_brain" / "brain1_image.nrrd"))
    assert volume.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert volume.GetStorageNode().GetClassName() == "vtkMRMLVolumeArchetypeStorageNode"
    assert slicer.util.arrayFromVolume(volume).shape == (25, 256, 256)
    assert slicer.util.saveScene(str(tmp_path / "scene"))  # the application logic's data-bundle writer
    assert (tmp_path / "scene" / "scene.mrml").is_file()
    assert (tmp_path / "scene" / "Data" / "brain1_image.nrrd").is_file()
    scene = slicer_env.slicer_standins.new_scene()
    slicer.util.loadScene(str(tmp_path / "scene" / "scene.mrml"))
    (loaded,) = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
    assert loaded.GetName() == "brain1_image" and loaded.GetScene() is scene
    assert slicer.util.arrayFromVolume(loaded).shape == (25, 256, 256)
