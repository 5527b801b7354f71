"""The feature store: content-addressed HDF5 rows of backbone features, one store per fingerprint.

* :mod:`.fingerprint`: what a feature value depends on, and the store's id and folder name;
* :mod:`.shards`: immutable sealed HDF5 shards with a sha256 per row and part (the file format);
* :mod:`.locks`: the fcntl locks of a store, and an OS error while changing it as one line;
* :mod:`.index`: ``index.npz``, hash → (shard, row), sealed by a digest and rebuilt from the shards;
* :mod:`.feature_store`: :class:`FeatureStore` (open, read, write under a lock, staging for Dask workers);
* :mod:`.unreadable`: the files a store knows it cannot decode, by content hash and decoder version;
* :mod:`.maintenance`: verify, repair, gc and compaction of one store (``store.verify()``, ``store.gc()``);
* :mod:`.catalog`: the stores of a cache folder, a damaged one flagged in its place (:func:`list_stores`);
* :mod:`.imported`: features computed elsewhere made a store (``cache import``), and the names ``-b`` takes for them
  (:func:`~xrayfeat.store.imported.import_features`, :func:`~xrayfeat.store.imported.imported_options`);
* :mod:`.rows`: :class:`StoreRows`, views of a store's rows read in batches (training past memory),
  and the memory-budget helpers.

A row is keyed by the SHA-256 of the image file's bytes; a dataset is a view. Nothing here loads a
deep-learning framework.
"""
