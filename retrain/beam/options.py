"""The Beam job's own settings (the one home of their defaults).

Everything else the job needs (inputs, module, --bottleneck_dir, distortion
flags, --distorted_copies, --random_seed) is the retrain Config, with the
defaults of retrain/config.py.
"""

from __future__ import annotations

import dataclasses

from retrain.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class BeamOptions:
  """Settings of the Beam bottleneck job beyond retrain's Config.

  Attributes:
    min_batch_size, max_batch_size: images per module call, as RunInference
      batches them (BatchElements adapts the size between the two to the
      measured cost). 8..64 keeps a batch of 224x224 images under 40 MB.
    large_model: load one module per machine and share it between worker
      processes (Beam's multi_process_shared) instead of one per process.
      Off: a feature module is small (EfficientNet-Lite0: 14 MB), and a
      model in its own process costs an inter-process copy of every batch.
    model_copies: with large_model, how many copies a machine loads (None:
      Beam's default, one).
    shard_max_vectors: a bundle writes a shard whenever it holds this many
      vectors, and the rest when it ends, so a worker's memory stays bounded
      (4096 x 1280 float32 = 20 MB).
    merge_local: when the cache is a local folder, merge the shards into
      one after the job (readers open fewer files).
  """
  min_batch_size: int = 8
  max_batch_size: int = 64
  large_model: bool = False
  model_copies: int = 0
  shard_max_vectors: int = 4096
  merge_local: bool = True

  def check(self) -> None:
    """Raises DatasetError naming a bad value and the fix."""
    if self.min_batch_size < 1 or self.max_batch_size < self.min_batch_size:
      raise DatasetError(
          f'--beam_min_batch_size={self.min_batch_size} and '
          f'--beam_max_batch_size={self.max_batch_size}: give 1 <= min <= '
          'max.')
    if self.shard_max_vectors < 1:
      raise DatasetError(f'--shard_max_vectors={self.shard_max_vectors} must '
                         'be at least 1.')
    if self.model_copies < 0:
      raise DatasetError(f'--beam_model_copies={self.model_copies} must be 0 '
                         '(Beam decides) or more.')


BEAM_DEFAULTS = BeamOptions()
