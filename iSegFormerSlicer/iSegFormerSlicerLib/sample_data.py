"""The OAI-ZIB knee of the iSegFormer repository, offered in Slicer's Sample Data module."""
from . import _, moduleResourcePath

SAMPLE_CATEGORY = "iSegFormer"
SAMPLE_NAME = "OAI-ZIB knee 9092628"
SAMPLE_BASE_URL = "https://github.com/uncbiag/iSegFormer/raw/v1.0/maskprop/MiVOS/example/"


def registerSampleData():
    """Register the knee (image and reference label) in the Sample Data module."""
    import SampleData

    logic = SampleData.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer >= 5.10
        logic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("iSegFormer"))
    logic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=moduleResourcePath("Icons/iSegFormerSlicer.png"),
        uris=[SAMPLE_BASE_URL + "9092628_image.nii.gz", SAMPLE_BASE_URL + "9092628_label.nii.gz"],
        fileNames=["9092628_image.nii.gz", "9092628_label.nii.gz"],
        nodeNames=["Knee9092628", "Knee9092628 reference"],
        loadFileTypes=["VolumeFile", "SegmentationFile"],
        # The image's hash is not published; the label's was computed from the repository's file.
        checksums=[None, "SHA256:4cfe75af553e9f334993a7668ea92f77f49fc2ebed526995603e6db6e193b651"],
    )
