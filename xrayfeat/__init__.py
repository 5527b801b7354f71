"""xrayfeat: chest X-ray transfer learning on a content-addressed HDF5 feature cache.

The package imports nothing heavy at import time: the deep-learning framework is
loaded only by the modules that run a model (``backbones``, ``extract``, ``heads``).
"""

__version__ = "0.1.0"
