"""On-disk cache of bottleneck vectors (HDF5), with no TensorFlow import.

See `bottleneck_cache.store` for the layout and the crash-safety guarantees.
"""

from bottleneck_cache.keys import DigestMemo, file_digest, stream_digest
from bottleneck_cache.store import (
           BottleneckStore,
           CacheError,
           ComputeFn,
           Stats,
           namespace_id,
)

__all__ = ['BottleneckStore', 'CacheError', 'ComputeFn', 'DigestMemo',
           'Stats', 'file_digest', 'namespace_id', 'stream_digest']
