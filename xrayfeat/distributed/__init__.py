"""Where work runs, never what runs: helper processes and their lifetime, Dask sessions for ``--cluster``.

* :mod:`.lifetime`: every helper process (the head's child, the decode pool, joblib's and a local
  Dask cluster's workers) dies with its command, however it ends (:func:`die_with_parent`); SIGTERM
  and SIGHUP unwind a command as SIGINT does (:func:`signals_unwind`); a helper writes into a run
  folder only while the run's claim holds (:class:`WriteGuard`, :func:`guarded_path`).
* :mod:`.session`: one Dask session (``--cluster local:N|tcp://HOST:PORT``) per address and process
  (:func:`session`, :class:`Session`), the shared-folder probe, the map over chunks with failure
  handling (:class:`ClusterError`), and scikit-learn's grid searches through joblib's Dask backend
  (:func:`joblib_backend`; without a session, joblib's local workers, which die with this process).

What a chunk computes lives with the extraction (:mod:`xrayfeat.extraction`).
"""
