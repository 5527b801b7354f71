"""Analysis of predictions and features: numbers, maps and pictures.

* :mod:`.metrics`: accuracy, balanced accuracy, ROC-AUC, confusion matrices with patient-cluster
  bootstrap intervals, operating points, calibration (:func:`score`, :func:`choose_thresholds`);
* :mod:`.scoring`: several models scored on the same rows, one way for fit-head and evaluate
  (:func:`evaluate_models`, thresholds chosen on validation, the spread across seeds);
* :mod:`.maps`: 2-D maps of features (PCA → t-SNE / UMAP) with agreement scores (:func:`embed_features`);
* :mod:`.gradcam`: Grad-CAM arithmetic on cached maps and overlays;
* :mod:`.plots`: every figure (curves, confusion, ROC, calibration, maps), saved atomically.

Nothing here trains a model or reads a run folder.
"""
