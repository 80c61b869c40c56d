"""Training and evaluation from the cache in chunks (retrain.head.streaming,
bottleneck_cache.chunks)."""

from __future__ import annotations

import numpy as np
import pytest

import bottleneck_cache
from bottleneck_cache import chunks


def _settings(**fields):
  from retrain.head import train as train_lib
  return train_lib.Settings(learning_rate=0.1, **fields)


def _store(tmp_path, n, dim=8, classes=3, seed=0, shard_rows=97):
  """A cache of n separable vectors in several shards, in label order (the
  worst case for chunking: storage order is class order)."""
  rng = np.random.default_rng(seed)
  labels = np.sort(rng.integers(0, classes, n))
  centres = rng.normal(0, 3, (classes, dim)).astype(np.float32)
  x = centres[labels] + rng.normal(0, 0.5, (n, dim)).astype(np.float32)
  keys = [f'{i:08d}' for i in range(n)]
  store = bottleneck_cache.BottleneckStore(str(tmp_path / 'bn'), {'kind': 't'})
  for start in range(0, n, shard_rows):
    store.put(keys[start:start + shard_rows], x[start:start + shard_rows])
  return store, keys, x, labels


def test_reader_reads_any_subset_in_item_order(tmp_path):
  store, keys, x, _ = _store(tmp_path, 1000)
  reader = chunks.ChunkReader(chunks.VectorIndex(store.directory),
                              keys[::-1] + keys[:5])
  items = np.array([0, 999, 1000, 1004, 500, 500, 3], np.int64)
  expected = np.concatenate([x[::-1], x[:5]])[items]
  np.testing.assert_array_equal(reader.read(items), expected)
  # Sparse rows (point selection) and dense rows (slices) agree.
  sparse = np.arange(0, 1000, 37)
  np.testing.assert_array_equal(reader.read(sparse),
                                np.concatenate([x[::-1], x[:5]])[sparse])
  with pytest.raises(KeyError, match='1 keys are not in the cache'):
    chunks.VectorIndex(store.directory).locate(['nope'])


def test_index_takes_the_later_shard_of_a_key_stored_twice(tmp_path):
  store = bottleneck_cache.BottleneckStore(str(tmp_path), {'kind': 't'})
  store.put(['b', 'a'], np.array([[1.0], [2.0]]))
  store.put(['a', 'c'], np.array([[3.0], [4.0]]))
  index = chunks.VectorIndex(store.directory)
  assert len(index) == 3
  assert list(index.contains(['a', 'ab', 'c', 'zz'])) == [True, False, True,
                                                          False]
  reader = chunks.ChunkReader(index, ['a', 'b', 'c'])
  np.testing.assert_array_equal(reader.read([0, 1, 2]).ravel(), [3, 1, 4])
  np.testing.assert_array_equal(reader.read([0, 1, 2]),
                                store.get(['a', 'b', 'c']))


def test_compact_keys_decode_digests_and_hash_other_keys():
  import hashlib
  digest = hashlib.sha256(b'image bytes').hexdigest()
  others = [f'{digest}:3', 'a', digest.upper(), '\u00e9t\u00e9']
  compact = chunks.compact_keys([digest] + others)
  assert compact.dtype == np.dtype('S32') and compact.shape == (5,)
  # A content key is its own 32 bytes; anything else is its SHA-256.
  assert compact[0] == bytes.fromhex(digest).rstrip(b'\0')
  for got, key in zip(compact[1:], others, strict=True):
    assert got == hashlib.sha256(key.encode()).digest().rstrip(b'\0')
  # Upper case is another key, so another compact key.
  assert compact[3] != compact[0]
  # str keys, bytes keys and a shard's bytes array agree, across blocks.
  many = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(70000)]
  many[5] = 'short'
  from_str = chunks.compact_keys(many)
  np.testing.assert_array_equal(
      from_str, chunks.compact_keys(np.array([k.encode() for k in many])))
  assert len(set(from_str.tolist())) == len(many)
  assert chunks.compact_keys([]).shape == (0,)


def test_index_lookup_equals_the_store_dict(tmp_path):
  """VectorIndex (sorted compact keys, searchsorted) finds the vector the
  store's dict finds, for content keys, copy keys and odd keys alike."""
  import hashlib
  rng = np.random.default_rng(1)
  store = bottleneck_cache.BottleneckStore(str(tmp_path), {'kind': 't'})
  digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
  keys = digests + [f'{d}:{c}' for d in digests[:50] for c in (0, 1)] + [
      'x', 'y:1', 'Z' * 64]
  order = rng.permutation(len(keys))
  x = rng.normal(size=(len(keys), 4)).astype(np.float32)
  for part in np.array_split(order, 7):
    store.put([keys[i] for i in part], x[part])
  # A key stored again in a later shard: the later vector wins in both.
  store.put([keys[0]], x[:1] + 1)
  index = chunks.VectorIndex(store.directory)
  assert len(index) == len(keys)
  wanted = [keys[i] for i in rng.permutation(len(keys))]
  for reader in (chunks.ChunkReader(index, wanted),
                 chunks.ChunkReader(index, chunks.compact_keys(wanted),
                                    compact=True)):
    np.testing.assert_array_equal(reader.read(np.arange(len(wanted))),
                                  store.get(wanted))
  assert reader.shard.dtype == np.int16 and reader.row.dtype == np.int32
  absent = ['nope', digests[0][:-1] + 'x', f'{digests[0]}:9']
  assert not index.contains(absent).any()
  assert index.contains(keys).all()


def test_chunks_stay_small_whatever_the_budget():
  """The budget decides in memory or streaming; it does not size chunks."""
  from retrain.head import streaming
  per_chunk = streaming.CHUNK_BYTES // (4 * 1280)
  expected = max(streaming.BLOCK_VECTORS, per_chunk)
  for budget in (100_000, 1_000_000, 10**8):
    assert streaming.chunk_capacity(budget, 1280) == expected
    assert (streaming.sample_capacity(budget, 1280) ==
            streaming.SAMPLE_BYTES // (4 * 1280))
  # A budget smaller than that still bounds them.
  assert streaming.chunk_capacity(4096, 1280) == 2048
  assert streaming.sample_capacity(4096, 1280) == 512


def test_schedule_mixes_blocks_and_covers_every_item():
  from retrain.head import streaming
  order = np.arange(10 * streaming.BLOCK_VECTORS, dtype=np.int64)
  rng = np.random.default_rng(0)
  schedule = streaming.chunk_schedule(order, 3 * streaming.BLOCK_VECTORS, rng)
  first_pass = [next(schedule) for _ in range(4)]  # 3 + 3 + 3 + 1 blocks
  assert [len(c) for c in first_pass] == [3072, 3072, 3072, 1024]
  np.testing.assert_array_equal(np.sort(np.concatenate(first_pass)), order)
  # Blocks of a chunk come from all over the storage order, not one run.
  assert np.ptp(first_pass[0]) > 3 * streaming.BLOCK_VECTORS


def test_should_stream_only_past_the_budget():
  from retrain.head import streaming
  assert not streaming.should_stream(100, 100)
  assert streaming.should_stream(101, 100)
  assert not streaming.should_stream(10**9, 0)


def test_streaming_training_learns_and_reads_in_chunks(tmp_path):
  from retrain.head import streaming
  store, keys, x, labels = _store(tmp_path, 6000)
  index = chunks.VectorIndex(store.directory)
  train, val = np.arange(0, 6000, 2), np.arange(1, 6000, 2)
  stats = streaming.StreamStats()
  points = []
  result = streaming.train_head_streaming(
      streaming.Labelled(chunks.ChunkReader(index, [keys[i] for i in train]),
                         labels[train]),
      streaming.Labelled(chunks.ChunkReader(index, [keys[i] for i in val]),
                         labels[val]), 3,
      _settings(steps=200, batch_size=50, eval_step_interval=20,
                validation_batch_size=100, seed=0),
      max_vectors_in_memory=2048, on_eval=points.append, stats=stats)
  # 3000 training vectors, chunks of 1024: at least 3 chunks were read and
  # never more than the budget at once.
  assert stats.chunks >= 3
  assert [p.step for p in points] == list(range(0, 200, 20)) + [199]
  assert points[-1].validation_accuracy > 0.95
  test = streaming.evaluate_streaming(
      result.head, chunks.ChunkReader(index, [keys[i] for i in val]),
      labels[val], max_vectors_in_memory=2048)
  assert test.count == 3000 and test.accuracy > 0.95
  np.testing.assert_array_equal(test.labels, labels[val])
  # The same head, evaluated in memory, gives the same predictions.
  from retrain.head import evaluate
  in_memory = evaluate.evaluate(result.head, x[val], labels[val])
  np.testing.assert_array_equal(in_memory.predictions, test.predictions)


def test_streaming_sees_every_class_though_the_cache_is_in_class_order(
    tmp_path):
  """Class-balanced sampling per chunk: a chunk of random blocks holds
  several classes even when the cache stores the classes one after
  another, so the head learns all of them."""
  from retrain.head import streaming
  store, keys, _, labels = _store(tmp_path, 9000, classes=3)
  index = chunks.ChunkReader(chunks.VectorIndex(store.directory), keys)
  result = streaming.train_head_streaming(
      streaming.Labelled(index, labels), streaming.Labelled(index, labels[:0]),
      3, _settings(steps=300, batch_size=30, eval_step_interval=100,
                validation_batch_size=-1, seed=1),
      max_vectors_in_memory=4096)
  test = streaming.evaluate_streaming(result.head, index, labels, 4096)
  per_class = [np.mean(test.predictions[labels == c] == c) for c in range(3)]
  assert min(per_class) > 0.9, per_class


def test_streaming_training_agrees_with_in_memory_training(tmp_path):
  """The same data and settings, once in memory and once streamed from the
  cache with a budget far below the training set (many chunks): both
  heads learn the task and predict held-out vectors alike."""
  from retrain.head import evaluate, streaming
  from retrain.head import train as train_lib
  store, keys, x, labels = _store(tmp_path, 8000, dim=16, classes=4, seed=3)
  index = chunks.VectorIndex(store.directory)
  train, val = np.arange(0, 8000, 4), np.arange(1, 8000, 4)
  test = np.arange(2, 8000, 2)
  settings = _settings(steps=300, batch_size=50, eval_step_interval=50,
                       validation_batch_size=-1, seed=0)
  in_memory = train_lib.train_head(x[train], labels[train], 4, x[val],
                                   labels[val], settings)
  stats = streaming.StreamStats()
  streamed = streaming.train_head_streaming(
      streaming.Labelled(chunks.ChunkReader(index, [keys[i] for i in train]),
                         labels[train]),
      streaming.Labelled(chunks.ChunkReader(index, [keys[i] for i in val]),
                         labels[val]), 4,
      settings, max_vectors_in_memory=1024, stats=stats)
  assert stats.chunks >= 2
  assert [p.step for p in streamed.history] == [
      p.step for p in in_memory.history]
  a = evaluate.evaluate(in_memory.head, x[test], labels[test])
  b = streaming.evaluate_streaming(
      streamed.head, chunks.ChunkReader(index, [keys[i] for i in test]),
      labels[test], max_vectors_in_memory=1024)
  assert a.accuracy > 0.97 and b.accuracy > 0.97
  assert abs(a.accuracy - b.accuracy) < 0.01
  assert np.mean(a.predictions == b.predictions) > 0.98


@pytest.mark.slow
def test_pipeline_streams_past_the_budget(tmp_path, fake_module, monkeypatch):
  """A run whose training vectors exceed --max_vectors_in_memory trains and
  evaluates from the cache, with distorted copies, and still exports."""
  import json

  from retrain import pipeline
  from retrain.head import streaming
  from tests.conftest import make_colour_dataset, shrunk_config
  calls = []
  real = streaming.train_head_streaming

  def recording(train, *args, **kwargs):
    calls.append((len(train), kwargs['stats']))
    return real(train, *args, **kwargs)

  monkeypatch.setattr(streaming, 'train_head_streaming', recording)
  images = make_colour_dataset(tmp_path / 'images', per_class=20)
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         max_vectors_in_memory=10, flip_left_right=True,
                         distorted_copies=1, projector_max_images=0,
                         output_graph='')
  result = pipeline.run(config)
  assert result.bottleneck_stats.computed == 60
  assert result.distorted_stats.computed == result.counts['train']
  # Originals and their copies, read in more than one chunk.
  ((trained_on, stats),) = calls
  assert trained_on == 2 * result.counts['train']
  assert stats.chunks > 1
  assert result.test_accuracy == 1.0 and result.test_count > 0
  assert result.history[-1].step == config.head.how_many_training_steps - 1
  summary = json.loads((tmp_path / 'out' / 'report' /
                        'run_summary.json').read_text())
  assert summary['config']['max_vectors_in_memory'] == 10
  assert (tmp_path / 'out' / 'saved_model' / 'saved_model.pb').exists()

  # Below the budget the same data takes the in-memory path and reuses
  # every cached vector.
  again = pipeline.run(dataclasses_replace(config, max_vectors_in_memory=0,
                                           saved_model_dir=''))
  assert len(calls) == 1
  assert again.bottleneck_stats.computed == 0
  assert again.distorted_stats.computed == 0
  assert again.test_accuracy == 1.0


def dataclasses_replace(config, **changes):
  return config.replace(**changes)


def test_negative_budget_is_a_clear_error(tmp_path, fake_module):
  from retrain.errors import DatasetError
  from retrain.steps import streamed
  from tests.conftest import shrunk_config
  config = shrunk_config(tmp_path, tmp_path / 'out', fake_module,
                         max_vectors_in_memory=-1)
  with pytest.raises(DatasetError, match='max_vectors_in_memory=-1 must be'):
    streamed.needed(config, 10)
  config = shrunk_config(tmp_path, tmp_path / 'out', fake_module,
                         max_vectors_in_memory=1000, flip_left_right=True,
                         distorted_copies=2)
  # 2000 images: 80% train, times 1 + 2 copies = 4800 > 1000.
  assert streamed.expected_training_vectors(config, 2000) == 4800
  assert streamed.needed(config, 2000) and not streamed.needed(config, 400)


def test_fine_tuning_a_run_that_would_stream_is_refused(tmp_path, fake_module):
  """Fine-tuning holds activations in memory: past the budget it is a
  clear error before any slow work, not silently dropped by streaming."""
  from retrain.errors import DatasetError
  from retrain.steps import streamed
  from tests.conftest import shrunk_config
  config = shrunk_config(tmp_path, tmp_path / 'out', fake_module,
                         max_vectors_in_memory=1000, fine_tune=True)
  assert not streamed.needed(config, 400)
  with pytest.raises(DatasetError, match=r'fine_tune holds the activations '
                     r'.* 1600 training vectors are past max_vectors_in_'
                     r'memory=1000.*raise max_vectors_in_memory'):
    streamed.needed(config, 2000)


@pytest.mark.slow
def test_a_streamed_run_fits_the_novelty_score(tmp_path, fake_module):
  """Past the memory budget the novelty score is fitted on a sample read
  from the cache, written to trust.json and carried by the export."""
  import json

  from retrain import pipeline
  from retrain.predict import load
  from retrain.report import trust
  from tests.conftest import make_colour_dataset, shrunk_config
  images = make_colour_dataset(tmp_path / 'images', per_class=40)
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         max_vectors_in_memory=90, projector_max_images=0,
                         output_graph='')
  result = pipeline.run(config)
  assert result.explained is None  # the streamed path: no per-class report
  section = json.loads((tmp_path / 'out' / 'report' /
                        trust.REPORT_FILE).read_text())['novelty']
  assert section is not None
  # Scored on a sample of the test set, read from the cache.
  assert 0 < section['test']['count'] <= result.test_count
  model = load.load_model(saved_model_dir=config.outputs.saved_model_dir)
  assert model.novelty_threshold == pytest.approx(section['threshold'])
