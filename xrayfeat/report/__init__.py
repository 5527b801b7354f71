"""The comparison report of one or more runs: a document model and its renderers.

* :mod:`.document`: the document model (headings, paragraphs, tables, figures) and its Markdown and
  HTML renderers, each escaping every name for its sink;
* :mod:`.cells`: how a figure reads in a table (numbers, durations, counts, changes, intervals);
* :mod:`.findings`: what the report says of multi-label runs (ROC-AUC per finding) and of any run's
  patient groups;
* :mod:`.crossval`: a run's cross-validation (``fit-head --cv``): its section and the comparison table's cell;
* :mod:`.writer`: :func:`write_report`, which reads each run through its record and lays out its
  metrics, warnings, external evaluations and figures.
"""
