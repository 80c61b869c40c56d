"""The Beam job's own settings (the one home of their defaults, help and
bounds; their flags are made from these declarations).

Everything else the job needs (inputs, module, --bottleneck_dir, distortion
flags, --distorted_copies, --random_seed) is the retrain Config, with the
defaults of retrain/config/.
"""

from __future__ import annotations

import dataclasses

from retrain.common.settings import setting
from retrain.errors import SettingError


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
  min_batch_size: int = setting(
      8, 'Fewest images per module call (RunInference batching).',
      flag='beam_min_batch_size')
  max_batch_size: int = setting(
      64, 'Most images per module call (RunInference batching).',
      flag='beam_max_batch_size')
  large_model: bool = setting(
      False, 'Share one module per machine between worker processes.',
      flag='beam_large_model')
  model_copies: int = setting(
      0, "With --beam_large_model, module copies per machine (0: Beam's "
      'default).', flag='beam_model_copies')
  shard_max_vectors: int = setting(
      4096, 'Most vectors per cache shard a bundle writes.')
  merge_local: bool = setting(
      True, 'Merge the shards of a local cache folder into one at the end.',
      flag='merge_local_shards')

  def check(self) -> None:
    """Raises SettingError naming a bad value and the fix."""
    if self.min_batch_size < 1 or self.max_batch_size < self.min_batch_size:
      raise SettingError(
          f'--beam_min_batch_size={self.min_batch_size} and '
          f'--beam_max_batch_size={self.max_batch_size}: give 1 <= min <= '
          'max.')
    if self.shard_max_vectors < 1:
      raise SettingError(f'--shard_max_vectors={self.shard_max_vectors} must '
                         'be at least 1.')
    if self.model_copies < 0:
      raise SettingError(f'--beam_model_copies={self.model_copies} must be 0 '
                         '(Beam decides) or more.')


BEAM_DEFAULTS = BeamOptions()
