"""On-disk cache of bottleneck vectors (HDF5), with no TensorFlow import.

See `bottleneck_cache.store` for the layout and the crash-safety guarantees.
"""

from bottleneck_cache.claims import ComputeFn, Stats
from bottleneck_cache.errors import CacheError, CacheFullError, bytes_needed, check_free_space
from bottleneck_cache.keys import DigestMemo, file_digest, stream_digest
from bottleneck_cache.store import BottleneckStore, namespace_id, vectors_written

__all__ = ['BottleneckStore', 'CacheError', 'CacheFullError', 'ComputeFn',
           'DigestMemo', 'Stats', 'bytes_needed', 'check_free_space',
           'file_digest', 'namespace_id', 'stream_digest', 'vectors_written']
