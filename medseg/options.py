"""The option vocabularies: every named choice a user can make, in one place.

Each vocabulary is a ``Literal`` type, which the command line shows and validates as
``<a|b|c>``, and the tuple of its values, which the library checks arguments against. The
modules that own a concept re-export its tuple under the name they always had (e.g.
:data:`medseg.instances.OBJECT_METHODS`). This module imports nothing from medseg.

Example:
    >>> OBJECT_METHODS
    ('components', 'watershed', 'boundary', 'seeded')
"""

from __future__ import annotations

from typing import Literal, get_args

ReassemblyMode = Literal["vote", "mean", "gaussian"]
"""How overlapping patch predictions combine (:mod:`medseg.patches`)."""
REASSEMBLY_MODES: tuple[str, ...] = get_args(ReassemblyMode)
TILE_MODE = "tile"
"""``inference.mode`` of an object model: 2D overlap-tile prediction (:mod:`medseg.tiling`)."""
INFERENCE_MODES: tuple[str, ...] = (*REASSEMBLY_MODES, TILE_MODE)
"""What a config's ``inference.mode`` may be: a reassembly mode (volume models) or tile."""

ObjectMethod = Literal["components", "watershed", "boundary", "seeded"]
"""How a 2D model's prediction becomes objects (:mod:`medseg.instances`,
:mod:`medseg.boundary`, :mod:`medseg.membranes`)."""
OBJECT_METHODS: tuple[str, ...] = get_args(ObjectMethod)

TtaMode = Literal["none", "flip", "flip-all"]
"""Test-time augmentation (:func:`medseg.ensemble.tta_flips`)."""
TTA_MODES: tuple[str, ...] = get_args(TtaMode)

CombineMode = Literal["mean", "vote"]
"""How ensemble members and TTA views combine (:mod:`medseg.ensemble`)."""
COMBINE_MODES: tuple[str, ...] = get_args(CombineMode)

InputColour = Literal["keep", "grey", "grey-darkest"]
"""How a microscopy model's input channels are made (``data.colour``): as read, or one grey
channel with a dark background whose light-background images take the mean or the darkest
of their channels (:func:`medseg.normalize.model_input_channels`)."""
INPUT_COLOURS: tuple[str, ...] = get_args(InputColour)

LabelFormat = Literal["classes", "instances", "binary"]
"""How a label file is read (:mod:`medseg.manifest`)."""
LABEL_FORMATS: tuple[str, ...] = get_args(LabelFormat)

Precision = Literal["auto", "fp32", "bf16"]
"""Arithmetic of 3D prediction (:mod:`medseg.predict`)."""
PRECISIONS: tuple[str, ...] = get_args(Precision)

SkullStrip = Literal["auto", "always", "never"]
"""When brain extraction runs (:mod:`medseg.preprocess`)."""
SKULL_STRIP_MODES: tuple[str, ...] = get_args(SkullStrip)

ObjectMetric = Literal["rand_error", "ap"]
"""What ``tune-postprocess`` chooses objects by (:mod:`medseg.tuning`)."""
OBJECT_METRICS: tuple[str, ...] = get_args(ObjectMetric)

OutputFormat = Literal["auto", "dicom-seg"]
"""How ``medseg predict`` writes a label map: ``auto`` by the output's suffix (NIfTI by
default), ``dicom-seg`` a DICOM Segmentation of a DICOM input (:mod:`medseg.dicom_seg`)."""
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
