"""The module's state in its parameter node, saved with the scene.

Slicer's scripted-module template keeps a module's state in a ``vtkMRMLScriptedModuleNode``
(``ScriptedLoadableModuleLogic.getParameterNode()``), through ``slicer.parameterNodeWrapper``.
That wrapper is part of the Slicer application, not of ``slicer-core``, so this class reads
and writes the same node with plain node references and parameters: it works in both.

Nodes are node references (the scene keeps them valid across saving and loading, and drops
them when the node is deleted); everything else is a string parameter.
"""
from .models import DEFAULT_MODEL

SOURCE_VOLUME_ROLE = "SourceVolume"
SEGMENTATION_ROLE = "Segmentation"
SEGMENT_ID = "SegmentID"
CLICK_MODEL = "ClickModel"
DEVICE = "Device"
PROPAGATION_METHOD = "PropagationMethod"
CLICK_PRECISION = "ClickPrecision"
DEFAULTS = {CLICK_MODEL: DEFAULT_MODEL, DEVICE: "auto", PROPAGATION_METHOD: "stcn", SEGMENT_ID: "",
            CLICK_PRECISION: "float32"}
DEVICES = ("auto", "cuda", "cpu")
PROPAGATION_METHODS = ("stcn", "interpolation")
#: float32: the reference's numbers; int8: the package's opt-in fast CPU mode (CPU only)
CLICK_PRECISIONS = ("float32", "int8")


class ModuleParameters:
    """Source volume, segmentation, segment, click model, device, click precision and
    propagation method."""

    def __init__(self, node):
        self.node = node

    def _node(self, role):
        return self.node.GetNodeReference(role)

    def _setNode(self, role, node):
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    def _get(self, name):
        value = self.node.GetParameter(name)
        return value if value else DEFAULTS[name]

    def _set(self, name, value):
        self.node.SetParameter(name, str(value) if value else "")

    @property
    def sourceVolume(self):
        return self._node(SOURCE_VOLUME_ROLE)

    @sourceVolume.setter
    def sourceVolume(self, node):
        self._setNode(SOURCE_VOLUME_ROLE, node)

    @property
    def segmentation(self):
        return self._node(SEGMENTATION_ROLE)

    @segmentation.setter
    def segmentation(self, node):
        self._setNode(SEGMENTATION_ROLE, node)

    @property
    def segmentId(self):
        return self._get(SEGMENT_ID) or None

    @segmentId.setter
    def segmentId(self, value):
        self._set(SEGMENT_ID, value)

    @property
    def clickModel(self):
        """A registry name or a checkpoint path."""
        return self._get(CLICK_MODEL)

    @clickModel.setter
    def clickModel(self, value):
        self._set(CLICK_MODEL, value)

    @property
    def device(self):
        return self._get(DEVICE)

    @device.setter
    def device(self, value):
        self._set(DEVICE, value)

    @property
    def clickPrecision(self):
        """float32, or int8 for the fast CPU mode (used only where the clicks run on the CPU)."""
        return self._get(CLICK_PRECISION)

    @clickPrecision.setter
    def clickPrecision(self, value):
        self._set(CLICK_PRECISION, value)

    @property
    def propagationMethod(self):
        return self._get(PROPAGATION_METHOD)

    @propagationMethod.setter
    def propagationMethod(self, value):
        self._set(PROPAGATION_METHOD, value)
