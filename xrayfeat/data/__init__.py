"""Data: from folders and tables on disk to a :class:`~.datasets.Dataset` of labelled, hashed images.

* :mod:`.datasets`: discovery of folder layouts and manifests (:func:`discover`, :func:`gather_images`)
  into a :class:`Dataset` of :class:`Item` (path, sha256, label, split, patient_id, source);
* :mod:`.labels`: what a manifest's label columns mean: one label, findings (1, 0, -1 uncertain, blank) and
  ``group:*`` columns, and the uncertain-label policies (:func:`targets`);
* :mod:`.hashes`: the file-hash cache (:class:`HashCache`, :func:`hash_files`) that keys every store row;
* :mod:`.columns`: a large manifest read column by column by pyarrow's CSV reader, where pyarrow is installed;
* :mod:`.images`: decoding PNG/JPEG/DICOM into uint8 RGB (:func:`read_image`, :func:`read_gray`, :func:`probe`);
* :mod:`.summary`: what ``inspect`` shows (:func:`summarize`, :func:`imbalance_warning`), and how a dataset looks in a
  notebook (:func:`dataset_repr`, :func:`dataset_html`);
* :mod:`.converters`: a public dataset's official tables (NIH, CheXpert, MIMIC-CXR, RSNA, COVIDx) into a manifest
  (:func:`convert_manifest`), reading no image;
* :mod:`.phantoms`: built-in synthetic chest X-rays for the demo and the tests (:func:`write_phantoms`).

Nothing here loads a deep-learning framework.
"""
