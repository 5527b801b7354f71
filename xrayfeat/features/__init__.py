"""Features: from decoded images to rows of the feature store, through a frozen backbone.

* :mod:`.weights`: resolving, checking (md5), installing and downloading a backbone's weights
  (:func:`resolve_weights`, :func:`download_weights`, :func:`install_weights`, :class:`WeightsInfo`);
* :mod:`.building`: the Keras models built from the registry (:func:`build_backbone`,
  :func:`build_extractor`, :func:`build_tail`);
* :mod:`.extraction`: the pipeline decode → model → write (:func:`extract`, :class:`ExtractResult`),
  in this process or as chunk jobs on Dask workers, and choosing the store a command reads
  (:func:`store_for`, :func:`open_store`).
* :mod:`.feature_export`: ``cache export``, a dataset's cached features in one ``.npz`` (:func:`export_features`).

The facts about each backbone are one row of :data:`xrayfeat.backbones.REGISTRY`.
A warm extraction (everything cached) imports no deep-learning framework.
"""
