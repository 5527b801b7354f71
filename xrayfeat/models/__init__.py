"""Models trained on cached features: the seed's head and the scikit-learn baselines.

* :mod:`.head`: the seed's Keras head (BatchNorm → Flatten → Dense(256, ReLU, L2) → Dropout → Dense),
  optionally with the backbone's tail (:func:`train_head`, :func:`load_head`, :class:`TrainedHead`);
* :mod:`.head_jax`: the head's training loop on jax, behind a checked fallback to Keras' ``fit``;
* :mod:`.head_fused`: the head's fused training step (CPU, jax), behind a checked fallback to Keras' own step;
* :mod:`.fused_kernel`: the one-pass numba kernel of that step: the Dense kernel's gradient, L2 and Adam;
* :mod:`.multilabel`: multi-label targets and masks, per-finding balanced weights, the head's masked loss and accuracy;
* :mod:`.head_numpy`: the trained head's inference in numpy (:class:`NumpyHead`), no framework needed;
* :mod:`.head_process`: the head trained in a child process that dies with its parent
  (:func:`train_and_predict`, :class:`HeadOutcome`);
* :mod:`.compile_cache`: jax's compiled programs kept on disk for that child, one folder per processor;
* :mod:`.baselines`: logistic regression, SVM and the pixels sentinel (:func:`fit_baseline`,
  :class:`FittedBaseline`, :func:`save_baseline`, :func:`load_baseline`).
"""
