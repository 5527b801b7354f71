"""Extraction: from decoded images to rows of the feature store, through a frozen backbone.

* :mod:`.weights`: resolving, checking (md5), installing and downloading a backbone's weights
  (:func:`resolve_weights`, :func:`download_weights`, :func:`install_weights`, :class:`WeightsInfo`);
* :mod:`.building`: the Keras models built from the registry (:func:`build_backbone`,
  :func:`build_extractor`, :func:`build_tail`);
* :mod:`.config`: feature options resolved to weights, device, precision and the store's fingerprint,
  without loading a framework (:func:`resolve`, :class:`FeatureConfig`);
* :mod:`.decoding`: the reader, image files decoded ahead of the device by a bounded process pool
  (:func:`decoded`, :func:`default_workers`), a failure as data (:class:`DecodeFailure`), and the
  :func:`decoder_version` under which the store remembers the files that do not decode;
* :mod:`.decode_worker`: one worker of that pool, a fresh interpreter fed over pipes, so no caller's
  ``__main__`` is ever imported again (:func:`~.decode_worker.command`, :func:`~.decode_worker.interpreter`);
* :mod:`.runner`: the mapper, full device batches through every backbone and out to every writer
  (:func:`run_batches`, :func:`build_model`, :func:`check_weights`);
* :mod:`.writing`: the writer, every store's write lock held for a run (:func:`writing_session`,
  :class:`WritingSession`) and a Dask worker's staged shard (:class:`ChunkWriter`);
* :mod:`.progress`: the progress, a bar on a terminal or in Jupyter, else a line every few seconds
  (:func:`progress_bar`);
* :mod:`.chunks`: extraction on Dask, chunk jobs sent, computed on workers and committed here
  (:class:`ChunkJob`, :func:`run_chunks`, :func:`compute_chunk`, :func:`prepare_worker`);
* :mod:`.pipeline`: the pipeline joined, dataset → missing rows → store, in this process or on Dask
  (:func:`extract`, :class:`ExtractResult`);
* :mod:`.selection`: choosing the store a command reads, the one that keeps the parts it needs
  (:func:`store_for`, :func:`open_store`);
* :mod:`.feature_export`: ``cache export``, a dataset's cached features in one ``.npz`` (:func:`export_features`).
* :mod:`.transformer`: a dataset's cached features as an array (:func:`read_part`, behind ``xf.features``) and
  :class:`CachedFeatures`, the scikit-learn transformer from image file paths to them (``xf.CachedFeatures``).

The facts about each backbone are one row of :data:`xrayfeat.backbones.REGISTRY`.
A warm extraction (everything cached) imports no deep-learning framework.
"""
