"""Where work runs, never what runs: Dask sessions for ``--cluster local:N|tcp://HOST:PORT``.

* :mod:`.session`: one Dask session per address and process (:func:`session`, :class:`Session`), the
  shared-folder probe, the map over chunks with failure handling (:class:`ClusterError`), and
  scikit-learn's grid searches through joblib's Dask backend (:func:`joblib_backend`).

What a chunk computes lives with the extraction (:mod:`xrayfeat.extraction`).
"""
