"""Options: every setting xrayfeat takes, declared once with its allowed values, default and help.

* :mod:`.constraints`: the constraint engine (:class:`Choice`, :class:`Interval`, :class:`Is`,
  :class:`Subset`, :class:`Constant`, :class:`AnyOf`, :class:`Parsed`), :func:`option`, :func:`validate`,
  the :func:`validate_params` decorator of public functions, and the one message format
  (:class:`OptionError` is a ``ValueError``; :class:`OptionTypeError` a ``TypeError``);
* :mod:`.parsers`: the options whose values are small languages (:func:`parse_threshold`,
  :func:`parse_cluster`, :func:`parse_size`, :func:`parse_list`), each with its check;
* :mod:`.settings`: the option dataclasses the Python API takes and the CLI builds from its flags
  (:class:`FeatureOptions`, :class:`RunOptions`, :class:`HeadOptions`, :class:`EmbedOptions`,
  :class:`PhantomOptions`) and the tuples of allowed values each choice reads.

The CLI derives its click types, defaults and help from these declarations; nothing is typed twice.
"""
