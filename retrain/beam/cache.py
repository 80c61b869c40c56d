"""The bottleneck cache through Beam's FileSystems (local, gs://, s3://...):
namespace folders, the keys present, immutable shards."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from absl import logging
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

import bottleneck_cache
from bottleneck_cache import shards, temporaries

RAW = CompressionTypes.UNCOMPRESSED


def namespace_dir(root: str, description: dict) -> str:
  return FileSystems.join(root, bottleneck_cache.namespace_id(description))


def prepare_namespace(root: str, description: dict) -> str:
  """Creates the namespace folder and its namespace.json; returns the folder.

  A local root goes through BottleneckStore, which also removes the
  temporary files of killed writers; any other (gs://, s3://...) through
  FileSystems.
  """
  if '://' not in root:
    return bottleneck_cache.BottleneckStore(root, description).directory
  import json
  directory = namespace_dir(root, description)
  path = FileSystems.join(directory, bottleneck_cache.store.NAMESPACE_FILE)
  if not FileSystems.exists(path):
    with FileSystems.create(path, compression_type=RAW) as f:
      f.write(json.dumps(description, indent=2, sort_keys=True).encode())
  return directory


def existing_keys(directory: str) -> set:
  """Keys of every readable shard in a namespace folder (any file system)."""
  found = set()
  pattern = FileSystems.join(directory, f'{shards.SHARD_PREFIX}*'
                             f'{shards.SHARD_SUFFIX}')
  for metadata in FileSystems.match([pattern])[0].metadata_list:
    try:
      with FileSystems.open(metadata.path, compression_type=RAW) as f:
        keys = shards.read_shard_keys(f)
    except (OSError, ValueError, KeyError) as e:
      logging.warning('Cannot read shard %s (%s); its vectors are computed '
                      'again.', metadata.path, e)
      continue
    found.update(k.decode('utf-8') for k in keys)
  return found


def write_shard_file(directory: str, keys: Sequence[str],
                     vectors: np.ndarray) -> Optional[str]:
  """Writes one immutable shard: temporary name, then rename.

  Rows are sorted by key and the name is a hash of the keys, so writing the
  same keys twice (a retried bundle) gives the same file. Returns the shard
  path, or None when it was already there.
  """
  order = sorted(range(len(keys)), key=keys.__getitem__)
  keys = [keys[i] for i in order]
  final = FileSystems.join(directory, shards.content_shard_name(keys))
  if FileSystems.exists(final):
    return None
  # The owner tag (pid@host) lets BottleneckStore's clean-up remove it once
  # that process is gone (or, from another host, once it is an hour old).
  tmp = FileSystems.join(
      directory, f'{shards.TMP_PREFIX}{temporaries.owner_tag()}')
  data = shards.encode_shard(keys, np.asarray(vectors, np.float32)[order])
  with FileSystems.create(tmp, compression_type=RAW) as f:
    f.write(data)
  FileSystems.rename([tmp], [final])
  return final
