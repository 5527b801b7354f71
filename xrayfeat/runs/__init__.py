"""Runs: a study's record on disk, the pipeline that writes it, and everything that uses a trained run.

* :mod:`.folder`: claiming ``runs/<name>/`` (an exclusive ``INCOMPLETE`` marker naming its writer),
  telling unfinished folders apart (:func:`new_run_dir`, :func:`unfinished_state`);
* :mod:`.record`: the typed, schema-checked :class:`RunRecord` (``config.json``) with a sha256 per
  artifact, :class:`RunWarning`, and the writers of its tables;
* :mod:`.lock`: one writer at a time per run: the run folder's lock, and the record read again and
  written back under it (:func:`updating_record`);
* :mod:`.outputs`: where a command may write what its user names: never over a run's recorded files,
  never inside a run, a store or a cache folder but in the place it owns (:func:`check_output`);
* :mod:`.schema`: the declared schema of each record file (``config.json`` per version, ``metrics.json``,
  ``export.json``), the strict JSON reader and the one validator (:func:`parse`, :class:`Damaged`);
* :mod:`.fit`: the fit-head pipeline (:func:`fit_head` → :class:`FitResult`): features, splits,
  head, baselines, metrics, figures, record;
* :mod:`.replay`: ``fit-head --config``: a recorded study run again from its record (:func:`replay`), its data
  held against ``splits.csv`` first, other library versions warned about, the new record saying what it repeats;
* :mod:`.crossval`: ``fit-head --cv``'s patient-grouped, stratified folds (:func:`assign_folds`), the check of K
  against the training patients (:func:`check_folds`) and the ``cv`` part of ``metrics.json``;
* :mod:`.maps`: the ``embed`` command on a dataset's cached features (:func:`embed_map`);
* :mod:`.loaded`: a finished run to use from Python (:func:`load_run` → :class:`Run`);
* :mod:`.prediction`: new images through a run (:func:`predict`; every model on a set of images: :func:`score_images`);
* :mod:`.external`: a run scored on another site's data, recorded under ``external/<name>/``;
* :mod:`.explanation`: Grad-CAM overlays from cached maps (:func:`explain`);
* :mod:`.tables`: a run's recorded metrics as pandas DataFrames (summary, per class, per source, operating points,
  calibration, external results, cross-validation folds), read off the checked record;
* :mod:`.display`: how a run and the results of predict, evaluate and explain look in a notebook (a short
  ``repr``, a ``_repr_html_`` with the warnings first);
* :mod:`.export`: a run as one portable model, preprocessing and calibration included, in the format asked
  (keras, savedmodel, onnx, litert) (:func:`export_run`);
* :mod:`.contract`: what export.json says beside the model: the decision, calibration, metrics with CIs,
  warnings, weights, preprocessing and versions, from the checked record (:func:`contract`);
* :mod:`.model_card`: ``MODEL_CARD.md`` from that contract, in the sections of Mitchell et al. 2019 (:func:`model_card`).
"""
