"""Converters: a public chest X-ray dataset's official tables into xrayfeat's standard manifest, reading no image.

* :mod:`.convert`: the registry (:data:`CONVERTERS`, one entry per dataset) and :func:`convert_manifest`, which
  writes the manifest and its ``<manifest>.json`` record (:class:`ConversionResult`);
* :mod:`.common`: what the converters share: checked tables, finding cells, sex/age/view groups, the
  patient-grouped split, :class:`ConvertOptions`;
* :mod:`.nih`: NIH ChestX-ray14 (``Data_Entry_2017.csv``, the official split lists);
* :mod:`.chexpert`: CheXpert v1.0 and -small (``train.csv``, ``valid.csv``);
* :mod:`.mimic`: MIMIC-CXR-JPG 2.0.0 (its chexpert, metadata and split tables; MIMIC-IV's ``patients.csv``);
* :mod:`.rsna`: RSNA Pneumonia Detection (``stage_2_train_labels.csv``);
* :mod:`.covidx`: COVIDx (``train.txt``, ``val.txt``, ``test.txt``), a single-label task.

See ``docs/datasets.md`` for each dataset's layout, from download to a report.
"""

from xrayfeat.data.converters.common import ConvertOptions
from xrayfeat.data.converters.convert import CONVERTERS, DATASET_NAMES, ConversionResult, convert_manifest

__all__ = ["CONVERTERS", "DATASET_NAMES", "ConversionResult", "ConvertOptions", "convert_manifest"]
