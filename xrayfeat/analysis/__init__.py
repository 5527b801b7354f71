"""Analysis of predictions and features: numbers, maps and pictures.

* :mod:`.metrics`: accuracy, balanced accuracy, ROC-AUC, confusion matrices with patient-cluster
  bootstrap intervals, operating points, calibration (:func:`score`, :func:`choose_thresholds`);
* :mod:`.multilabel`: multi-label scoring, entry by entry with uncertain and blank entries masked: per-finding,
  macro and micro ROC-AUC, average precision, thresholds per finding (:func:`score_multilabel`);
* :mod:`.subgroups`: the figures per patient group (sex, age band, view) and the gaps between them
  (:func:`by_group`, :func:`group_gap_warnings`);
* :mod:`.scoring`: several models scored on the same rows, one way for fit-head and evaluate
  (:func:`evaluate_models`, thresholds chosen on validation, the spread across seeds);
* :mod:`.calibrators`: calibration fitted on validation and applied after (temperature, isotonic), as plain data
  (:func:`fit_calibrator`, :func:`apply_calibrator`);
* :mod:`.decision`: from probabilities to a decision, by the argmax or the thresholds (:func:`decide`);
* :mod:`.maps`: 2-D maps of features (PCA → t-SNE / UMAP) with agreement scores (:func:`embed_features`);
* :mod:`.gradcam`: Grad-CAM arithmetic on cached maps and overlays;
* :mod:`.plots`: every figure (curves, confusion, ROC, calibration, maps), saved atomically.

Nothing here trains a model or reads a run folder.
"""
