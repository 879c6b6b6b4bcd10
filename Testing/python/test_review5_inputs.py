"""Review 5b items 1, 2, 6a, 6c, 11, 13, 14c: one PNG reader, one pairing rule and one --slices
grammar for `evaluate-clicks` and `finetune`, and chosen slices checked before any work.

Every file here is a real PNG written by Pillow or a real volume written by SimpleITK.
"""
from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.errors import InvalidInputError
from isegformer.evaluation.samples import png_samples, volume_samples
from isegformer.finetune.data import (
    parse_slice_choice,
    slices_from_png_folders,
    slices_from_volume,
)

SIZE = 40


def _folders(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    return images, masks


def _gray(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((SIZE, SIZE)) * 200 + 20).astype(np.uint8)


def _save(array, path, mode=None, palette=None):
    from PIL import Image

    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def _palette_mask():
    """Mode P holding indices 1 (300 px) and 2 (420 px); the palette shows 1 red, 2 green."""
    from PIL import Image

    indices = np.zeros((SIZE, SIZE), dtype=np.uint8)
    indices[2:17, 2:22] = 1   # 15 x 20 = 300
    indices[20:34, 5:35] = 2  # 14 x 30 = 420
    image = Image.new("P", (SIZE, SIZE))
    image.frombytes(indices.tobytes())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    return image, {1: 300, 2: 420}


def _square_mask():
    """A 40x40 mask holding one 20x20 object (400 px) of label 1."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[5:25, 5:25] = 1
    return mask


def _eval_counts(images, masks):
    return {s.name: int(s.gt.sum()) for s in png_samples(images, masks)}


def _finetune_counts(images, masks):
    out = {}
    for s in slices_from_png_folders(images, masks, min_area=1):
        for value in s.object_ids:
            out[f"{s.name}#{value}"] = int(np.count_nonzero(s.label == value))
    return out


# --- item 1: pairing by the full stem ---------------------------------------------------------------

def test_dotted_names_pair_with_their_own_masks_in_both_commands(tmp_path):
    images, masks = _folders(tmp_path)
    first = np.zeros((SIZE, SIZE), np.uint8)
    first[10:25, 10:30] = 1  # 300 px
    second = np.zeros((SIZE, SIZE), np.uint8)
    second[0:5, :] = 1       # 200 px
    for name, mask in (("case.001", first), ("case.002", second)):
        _save(_gray(), images / f"{name}.png")
        _save(mask, masks / f"{name}.png")
    expected = {"case.001.png#1": 300, "case.002.png#1": 200}
    assert _eval_counts(images, masks) == expected
    assert _finetune_counts(images, masks) == expected


def test_two_files_with_one_stem_are_refused(tmp_path):
    images, masks = _folders(tmp_path)
    mask = _square_mask()
    _save(_gray(), images / "a.png")
    _save(_gray(1), images / "a.PNG")
    _save(mask, masks / "a.png")
    for read in (png_samples, slices_from_png_folders):
        with pytest.raises(InvalidInputError, match=r"both a\.PNG and a\.png|both a\.png and a\.PNG"):
            read(images, masks)


def test_upper_case_suffix_is_read_by_both_commands(tmp_path):
    images, masks = _folders(tmp_path)
    mask = _square_mask()
    _save(_gray(), images / "a.png")
    _save(mask, masks / "a.png")
    _save(_gray(1), images / "B.PNG")
    _save(mask, masks / "B.PNG")
    expected = {"B.PNG#1": 400, "a.png#1": 400}
    assert _eval_counts(images, masks) == expected
    assert _finetune_counts(images, masks) == expected


def test_an_image_without_mask_is_refused_and_a_mask_without_image_is_named(tmp_path, caplog):
    images, masks = _folders(tmp_path)
    mask = _square_mask()
    _save(_gray(), images / "a.png")
    _save(mask, masks / "a.png")
    _save(mask, masks / "orphan.png")
    with caplog.at_level(logging.WARNING):
        assert list(_eval_counts(images, masks)) == ["a.png#1"]
    assert "orphan.png" in caplog.text and "not used" in caplog.text
    _save(_gray(), images / "b.png")
    for read in (png_samples, slices_from_png_folders):
        with pytest.raises(InvalidInputError, match=r"no mask of the same name.*b\.png"):
            read(images, masks)


# --- items 2 and 6a: label values, never colours; any image mode ----------------------------------

def test_both_commands_read_palette_one_bit_and_16_bit_files_alike(tmp_path):
    images, masks = _folders(tmp_path)
    palette, palette_counts = _palette_mask()
    _save(_gray(), images / "pal.png")
    palette.save(masks / "pal.png")
    one_bit = np.zeros((SIZE, SIZE), bool)
    one_bit[4:24, 4:14] = True  # 200 px
    _save(_gray(1) > 120, images / "bit.png")  # a 1-bit image as well
    _save(one_bit, masks / "bit.png")
    deep = np.zeros((SIZE, SIZE), np.uint16)
    deep[10:20, 10:30] = 300  # 200 px of label 300, which 8 bits cannot hold
    _save((_gray(2).astype(np.uint16) * 250), images / "deep.png")
    _save(deep, masks / "deep.png")
    expected = {"bit.png#1": 200, "deep.png#300": 200,
                **{f"pal.png#{v}": n for v, n in palette_counts.items()}}
    assert _eval_counts(images, masks) == expected
    assert _finetune_counts(images, masks) == expected
    by_name = {s.name: s for s in slices_from_png_folders(images, masks)}
    bit = by_name["bit.png"].image
    assert set(np.unique(bit)) == {0.0, 1.0} and bit.shape == (SIZE, SIZE, 3)
    assert 0.0 <= by_name["deep.png"].image.min() and by_name["deep.png"].image.max() <= 1.0


def test_a_colour_mask_is_refused_by_both_commands(tmp_path):
    images, masks = _folders(tmp_path)
    colour = np.zeros((SIZE, SIZE, 3), np.uint8)
    colour[5:25, 5:25] = (255, 0, 0)
    colour[25:35, 5:25] = (0, 255, 0)
    _save(_gray(), images / "a.png")
    _save(colour, masks / "a.png")
    for read in (png_samples, slices_from_png_folders):
        with pytest.raises(InvalidInputError, match="differing colour channels"):
            read(images, masks)


# --- item 6c: an oversized header ---------------------------------------------------------------

def _png_declaring(path, width, height):
    """A valid 1x1 gray PNG whose IHDR (with a correct CRC) declares width x height."""
    from PIL import Image

    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [9000, 20000])  # over the package's limit; over PIL's own
def test_an_oversized_png_is_a_package_error_in_both_commands(tmp_path, side):
    images, masks = _folders(tmp_path)
    _png_declaring(images / "a.png", side, side)
    _save(np.ones((SIZE, SIZE), np.uint8), masks / "a.png")
    for read in (png_samples, slices_from_png_folders):
        with pytest.raises(InvalidInputError, match=r"a\.png.*(pixels|slice can have).*remove it"):
            read(images, masks)


def test_an_oversized_png_gives_evaluate_clicks_a_message_not_a_traceback(tmp_path, capsys):
    images, masks = _folders(tmp_path)
    _png_declaring(images / "a.png", 20000, 20000)
    _save(np.ones((SIZE, SIZE), np.uint8), masks / "a.png")
    code = main(["evaluate-clicks", "--model", str(tmp_path / "none.pth"), "--images", str(images),
                 "--masks", str(masks), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "a.png" in err and "Traceback" not in err


# --- item 14c and a constant image: refused before any sample runs, saying what to do --------------

def test_a_mask_of_another_size_says_what_to_do(tmp_path):
    images, masks = _folders(tmp_path)
    _save(_gray(), images / "a.png")
    _save(np.ones((SIZE, SIZE + 1), np.uint8), masks / "a.png")
    for read in (png_samples, slices_from_png_folders):
        with pytest.raises(InvalidInputError, match=r"41x40 pixels.*40x40.*Give the mask made on this image"):
            read(images, masks)


def test_a_constant_image_is_refused_while_reading_not_while_clicking(tmp_path):
    images, masks = _folders(tmp_path)
    mask = _square_mask()
    _save(_gray(), images / "a.png")
    _save(mask, masks / "a.png")
    _save(np.full((SIZE, SIZE), 90, np.uint8), images / "flat.png")
    _save(mask, masks / "flat.png")
    for read in (png_samples, slices_from_png_folders):
        with pytest.raises(InvalidInputError, match=r"flat\.png is constant"):
            read(images, masks)


# --- item 11: one --slices grammar ---------------------------------------------------------------

def _volume_pair(tmp_path, suffix=".nii.gz", nan_slice=None, nan_voxels=None):
    import SimpleITK as sitk

    labels = np.zeros((12, 32, 32), np.uint8)
    labels[2:10, 6:20, 6:20] = 1
    rng = np.random.default_rng(0)
    volume = (rng.normal(size=labels.shape) + 5 * labels).astype(np.float32)
    if nan_slice is not None:
        volume[nan_slice, :nan_voxels] = np.nan  # the whole slice, or its first nan_voxels rows
    paths = tmp_path / f"vol{suffix}", tmp_path / f"lab{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(paths[0]))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(paths[1]))
    return paths


def _evaluated_slices(samples):
    return sorted(int(s.name.split(":")[-1].split("#")[0]) for s in samples)


def test_both_commands_take_ranges_all_and_lists(tmp_path):
    vol, lab = _volume_pair(tmp_path)
    assert parse_slice_choice("3-5,8") == [3, 4, 5, 8]
    assert parse_slice_choice("ALL") == "all"
    trained = slices_from_volume(vol, lab, 0, parse_slice_choice("3-5,8"))
    assert [s.name.rsplit(" ", 1)[1] for s in trained] == ["3", "4", "5", "8"]
    assert _evaluated_slices(volume_samples(vol, lab, 0, "3-5,8")) == [3, 4, 5, 8]
    assert _evaluated_slices(volume_samples(vol, lab, 0, "all")) == list(range(2, 10))


@pytest.mark.parametrize("spec, message", [
    ("8-3", r"runs backwards.*3-8"),
    ("5,5,5", r"slice\(s\) \[5\] more than once"),
    ("3-8,5", r"slice\(s\) \[5\] more than once"),
    ("0-99", r"do not exist"),
])
def test_a_slice_spec_that_would_change_the_numbers_is_refused_by_both(tmp_path, spec, message):
    vol, lab = _volume_pair(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        list(volume_samples(vol, lab, 0, spec))
    with pytest.raises(InvalidInputError, match=message):
        slices_from_volume(vol, lab, 0, parse_slice_choice(spec))


# --- item 13: NaN voxels in a chosen slice ---------------------------------------------------------

def test_nan_in_a_chosen_slice_is_refused_by_its_index(tmp_path):
    """NRRD keeps NaN voxels: both commands name the slice that holds them."""
    vol, lab = _volume_pair(tmp_path, ".nrrd", nan_slice=5)
    with pytest.raises(InvalidInputError, match=r"slice\(s\) 5 along axis 0 hold NaN"):
        list(volume_samples(vol, lab, 0, "4-6"))
    with pytest.raises(InvalidInputError, match=r"slice\(s\) 5 along axis 0 hold NaN"):
        slices_from_volume(vol, lab, 0, [4, 5, 6])


@pytest.mark.parametrize("rows", [None, 1])  # the whole slice 5, or its first row only
def test_a_nifti_nan_slice_is_refused_not_trained_as_zeros(tmp_path, rows):
    """ITK's NIfTI reader turns NaN into 0; the package's reader puts them back, so slice 5 is
    named, and a volume holding NaN elsewhere is refused as a whole (its intensity window would
    be undefined), as an NRRD's is."""
    vol, lab = _volume_pair(tmp_path, ".nii.gz", nan_slice=5, nan_voxels=rows)
    with pytest.raises(InvalidInputError, match=r"slice\(s\) 5 along axis 0 hold NaN"):
        slices_from_volume(vol, lab, 0, [4, 5, 6])
    with pytest.raises(InvalidInputError, match=r"slice\(s\) 5 along axis 0 hold NaN"):
        volume_samples(vol, lab, 0, "4-6")
    with pytest.raises(InvalidInputError, match="NaN or infinite voxel"):
        slices_from_volume(vol, lab, 0, [4, 6])


def test_a_slice_without_contrast_is_refused_by_its_index(tmp_path):
    vol, lab = _volume_pair(tmp_path)
    with pytest.raises(InvalidInputError, match=r"slice\(s\) 3, 4 along axis 0 are constant"):
        volume_samples(vol, lab, 0, "3-4", window=(50.0, 60.0))  # every voxel under the window


def test_evaluate_clicks_refuses_a_nan_slice_before_any_sample_or_model(tmp_path, capsys):
    """Slices 4 and 6 are fine; slice 5 must stop the run before slice 4 is evaluated. The model
    file does not exist, so reaching the model at all would give another error."""
    vol, lab = _volume_pair(tmp_path, ".nii.gz", nan_slice=5)
    code = main(["evaluate-clicks", "--model", str(tmp_path / "none.pth"), "--volume", str(vol),
                 "--labels", str(lab), "--slices", "4-6", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "slice(s) 5 along axis 0" in err and "none.pth" not in err


@pytest.mark.parametrize("indices", [[5, 5], ["a"], [2.5], [True]])
def test_api_slice_lists_follow_the_same_rules(tmp_path, indices):
    vol, lab = _volume_pair(tmp_path)
    with pytest.raises(InvalidInputError, match="more than once|whole numbers"):
        slices_from_volume(vol, lab, 0, indices)
    with pytest.raises(InvalidInputError, match="more than once|whole numbers"):
        volume_samples(vol, lab, 0, indices)


def test_paper_slices_in_a_short_volume_say_so_in_both_commands(tmp_path):
    vol, lab = _volume_pair(tmp_path)  # 12 slices: 40, 80 and 120 do not exist
    with pytest.raises(InvalidInputError, match=r"none of the paper's slices 40, 80, 120 exists"):
        slices_from_volume(vol, lab, 0, "paper")
    with pytest.raises(InvalidInputError, match=r"none of the paper's slices 40, 80, 120 exists"):
        volume_samples(vol, lab, 0, "paper")
