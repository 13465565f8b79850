"""bandstore: an embedding store for recommendation models.

Rows read together share 4 KB blocks on a slow tier (NVM, NVMe), a DRAM cache sized by
miniature simulation sits in front, and numba kernels serve pooled lookups without the GIL.
"""

from bandstore.errors import *  # noqa: F403 - the error classes are part of the public API
from bandstore.errors import BandstoreError
from bandstore.kernels.cache import NEVER
from bandstore.store import Store, TableInfo, create, open
from bandstore.trace import Trace

__version__ = "0.1.0"


__all__ = ["BandstoreError", "NEVER", "Store", "TableInfo", "Trace", "create", "open"]
