"""The cache, with numpy only: get-or-compute, failures, crash safety."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bottleneck_cache
from bottleneck_cache import store as store_lib
from tests.conftest import kill_after

NS = {'module': 'fake', 'module_fingerprint': 'abc', 'input_size': [8, 8]}


def vec(key, dim=4):
  """A deterministic vector per key."""
  seed = int.from_bytes(key.encode(), 'little') % (2**32)
  return np.random.default_rng(seed).random(dim).astype(np.float32)


def make_compute(keys, calls, batch=2, fail=()):
  """A ComputeFn over `keys` that records the indices it was asked for."""
  def compute(missing):
    calls.append(list(missing))
    for start in range(0, len(missing), batch):
      part = [i for i in missing[start:start + batch] if keys[i] not in fail]
      yield part, (np.stack([vec(keys[i]) for i in part]) if part else
                   np.zeros((0, 4), np.float32))
  return compute


KEYS = [f'k{i}' for i in range(7)]


def test_computes_missing_only_and_returns_in_order(tmp_path):
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  calls = []
  v, ok, stats = s.get_or_compute(KEYS[:3], make_compute(KEYS[:3], calls))
  assert calls == [[0, 1, 2]]
  assert ok.all() and stats.computed == 3 and stats.reused == 0
  np.testing.assert_array_equal(v, np.stack([vec(k) for k in KEYS[:3]]))

  s2 = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  calls = []
  v, ok, stats = s2.get_or_compute(KEYS[::-1], make_compute(KEYS[::-1], calls))
  # Only the four new keys (indices into the reversed list) are computed.
  assert calls == [[0, 1, 2, 3]]
  assert stats.reused == 3 and stats.computed == 4
  np.testing.assert_array_equal(v, np.stack([vec(k) for k in KEYS[::-1]]))


def test_duplicate_keys_computed_once(tmp_path):
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  calls = []
  keys = ['k1', 'k1', 'k2']
  v, ok, stats = s.get_or_compute(keys, make_compute(keys, calls))
  assert calls == [[0, 2]]
  assert ok.tolist() == [True, True, True]
  np.testing.assert_array_equal(v[0], v[1])


def test_failures_are_reported_not_stored(tmp_path):
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  v, ok, stats = s.get_or_compute(KEYS[:4], make_compute(KEYS[:4], [], fail={'k2'}))
  assert ok.tolist() == [True, True, False, True]
  assert v.shape == (3, 4) and stats.failed == 1
  assert 'k2' not in s


def test_namespaces_do_not_share(tmp_path):
  a = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  a.put(['x'], np.ones((1, 4), np.float32))
  b = bottleneck_cache.BottleneckStore(str(tmp_path), dict(NS, module='other'))
  assert 'x' not in b and len(b) == 0
  assert a.directory != b.directory


def test_merge_keeps_everything(tmp_path):
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  keys = [f'm{i}' for i in range(40)]
  def compute(missing):
    for i in missing:
      yield [i], vec(keys[i])[None]
  s.get_or_compute(keys, compute)
  shards = [n for n in os.listdir(s.directory) if n.endswith('.h5')]
  assert len(shards) == 1  # 40 one-vector shards were merged
  again = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  np.testing.assert_array_equal(again.get(keys),
                                np.stack([vec(k) for k in keys]))


def test_corrupt_shard_is_set_aside_and_recomputed(tmp_path, caplog):
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  s.put(['a'], vec('a')[None])
  s.put(['b'], vec('b')[None])
  shard = sorted(n for n in os.listdir(s.directory) if n.endswith('.h5'))[0]
  with open(os.path.join(s.directory, shard), 'r+b') as f:
    f.truncate(100)
  s2 = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  assert 'cannot be read' in caplog.text
  assert len(s2) == 1
  assert os.path.exists(os.path.join(s.directory, shard + '.corrupt'))
  calls = []
  v, ok, _ = s2.get_or_compute(['a', 'b'], lambda m: (calls.append(m) or [
      (m, np.stack([vec(['a', 'b'][i]) for i in m]))]))
  assert calls == [[0]] and ok.all()


def test_rejects_bad_vectors(tmp_path):
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  s.put(['a'], np.ones((1, 4), np.float32))
  with pytest.raises(bottleneck_cache.CacheError, match='length 3'):
    s.put(['b'], np.ones((1, 3), np.float32))
  with pytest.raises(bottleneck_cache.CacheError, match='NaN'):
    s.put(['c'], np.full((1, 4), np.nan, np.float32))


@pytest.mark.slow
def test_no_tensorflow_import():
  code = ('import sys, bottleneck_cache; '
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.stdout.strip() == 'False'


@pytest.mark.slow
def test_kill_during_writes_leaves_readable_cache(tmp_path):
  """SIGKILL a writer at a random moment: whole shards survive, none breaks."""
  script = textwrap.dedent(f'''
      import sys, numpy as np
      sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
      import bottleneck_cache
      s = bottleneck_cache.BottleneckStore({str(tmp_path)!r}, {NS!r})
      for i in range(100000):
          s.put([f"w{{i}}"], np.full((1, 4), i, np.float32))
          print(i, flush=True)
  ''')
  done = kill_after(script, 150)
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  assert len(s) >= done + 1
  keys = [f'w{i}' for i in range(done + 1)]
  np.testing.assert_array_equal(s.get(keys)[:, 0], np.arange(done + 1))
  # No temporary file of the dead writer is left behind.
  assert not [n for n in os.listdir(s.directory)
              if n.startswith(store_lib.TMP_PREFIX)]


def test_digest_memo_rehashes_only_changed_files(tmp_path, monkeypatch):
  from bottleneck_cache import keys
  a, b = tmp_path / 'a.bin', tmp_path / 'b.bin'
  a.write_bytes(b'aaa')
  b.write_bytes(b'bbb')
  memo = keys.DigestMemo(str(tmp_path / 'cache'))
  assert memo.digest(str(a)) == keys.file_digest(str(a))
  memo.digest(str(b))
  memo.save()

  hashed = []
  real = keys.file_digest
  monkeypatch.setattr(keys, 'file_digest',
                      lambda p: hashed.append(p) or real(p))
  b.write_bytes(b'bbbb')  # edited: size and mtime change
  memo = keys.DigestMemo(str(tmp_path / 'cache'))
  assert memo.digest(str(a)) == real(str(a))
  assert memo.digest(str(b)) == real(str(b))
  assert hashed == [os.path.realpath(b)]


@pytest.mark.parametrize('zero_ending', [False, True])
def test_digest_memo_round_trip_in_the_numpy_format(tmp_path, monkeypatch,
                                                    zero_ending):
  from bottleneck_cache import keys
  if zero_ending:
    # 1 path key in 256 ends in a zero byte, which numpy cuts from a bytes
    # item: such keys must still be found.
    real_key = keys.path_key
    monkeypatch.setattr(keys, 'path_key',
                        lambda real: real_key(real)[:15] + b'\0')
  files = []
  for i in range(13):
    files.append(tmp_path / f'f{i}.bin')
    files[-1].write_bytes(bytes([i]) * i)
  memo = keys.DigestMemo(str(tmp_path / 'cache'))
  expected = {str(f): keys.file_digest(str(f)) for f in files}
  assert [memo.digest(str(f)) for f in files] == list(expected.values())
  memo.save()
  assert (tmp_path / 'cache' / keys.MEMO_FILE).exists()
  with np.load(tmp_path / 'cache' / keys.MEMO_FILE) as data:
    assert data['digest'].shape == (len(files), 32)
    assert data['path'].dtype == np.dtype('S16')
  monkeypatch.setattr(keys, 'file_digest', lambda p: pytest.fail(p))
  # Found in this memo too (merged on save), and in a reloaded one.
  assert [memo.digest(str(f)) for f in files] == list(expected.values())
  again = keys.DigestMemo(str(tmp_path / 'cache'))
  assert len(again) == len(files)
  # Read back from the arrays, not hashed (file_digest would fail).
  assert {str(f): again.digest(str(f)) for f in files} == expected


def test_digest_memo_merge_equals_concatenate_and_sort():
  """save() merges this run's entries into the sorted table one column at
  a time, in place; the result is what sorting everything would give (a re-hashed
  file's new entry wins)."""
  from bottleneck_cache import keys
  rng = np.random.default_rng(0)

  def table(n):
    return keys._sorted_unique({
        'path': rng.integers(0, 256, (n, 16), np.uint8).view('S16').ravel(),
        'size': rng.integers(0, 9, n), 'mtime_ns': rng.integers(0, 9, n),
        'ino': rng.integers(0, 9, n).astype(np.uint64),
        'digest': rng.integers(0, 256, (n, 32), np.uint8)})

  old, new = table(1000), table(300)
  new = keys._sorted_unique({name: np.concatenate([new[name], old[name][:50]])
                             for name in new})
  new['size'][:] = 99
  expected = keys._sorted_unique({name: np.concatenate([old[name], new[name]])
                                  for name in old})
  merged = keys._merge(old, new)
  assert merged is old  # in place: one column at a time is held twice
  for name in expected:
    np.testing.assert_array_equal(merged[name], expected[name])
  assert len(merged['path']) == 1300 and np.sum(merged['size'] == 99) == 350
  assert len(keys._merge(keys._empty_table(), new)['path']) == 350


def test_digest_memo_reads_the_old_json_memo_and_replaces_it(tmp_path,
                                                            monkeypatch):
  """A cache written by an earlier version keeps its digests: the JSON memo
  is read (its digest is returned without hashing), then replaced by the
  numpy memo on save."""
  import json

  from bottleneck_cache import keys
  f = tmp_path / 'img.jpg'
  f.write_bytes(b'pixels')
  st = os.stat(f)
  remembered = 'ab' * 32  # not the real digest: proves it was read
  cache = tmp_path / 'cache'
  cache.mkdir()
  (cache / keys.OLD_MEMO_FILE).write_text(json.dumps(
      {'version': 1, 'files': {
          os.path.realpath(f): [st.st_size, st.st_mtime_ns, st.st_ino,
                                remembered],
          '/gone/elsewhere.jpg': [1, 2, 3, 'cd' * 32]}}))
  monkeypatch.setattr(keys, 'file_digest', lambda p: pytest.fail(p))
  memo = keys.DigestMemo(str(cache))
  assert len(memo) == 2
  assert memo.digest(str(f)) == remembered
  memo.save()  # nothing new: nothing written
  assert not (cache / keys.MEMO_FILE).exists()
  g = tmp_path / 'new.jpg'
  g.write_bytes(b'other')
  monkeypatch.undo()
  new_digest = memo.digest(str(g))
  memo.save()
  assert (cache / keys.MEMO_FILE).exists()
  assert not (cache / keys.OLD_MEMO_FILE).exists()
  monkeypatch.setattr(keys, 'file_digest', lambda p: pytest.fail(p))
  reloaded = keys.DigestMemo(str(cache))
  assert len(reloaded) == 3
  assert reloaded.digest(str(f)) == remembered
  assert reloaded.digest(str(g)) == new_digest


def test_hashing_resumes_from_the_memo_after_a_kill(tmp_path, monkeypatch):
  """_hash_files saves the memo as it goes: a run that dies part-way
  leaves the files hashed so far in the memo, and the next run reads only
  the others. A path listed twice is hashed once."""
  from bottleneck_cache import keys
  from retrain.bottlenecks import compute
  monkeypatch.setattr(compute, '_HASH_PART', 10)
  monkeypatch.setattr(compute, '_MEMO_SAVE_EVERY', 20)
  paths = []
  for i in range(50):
    paths.append(str(tmp_path / f'{i:02d}.jpg'))
    with open(paths[-1], 'wb') as f:
      f.write(i.to_bytes(2, 'little'))
  hashed = []
  real = keys.file_digest

  def dies_at_the_35th(path):
    if len(hashed) == 35:
      raise KeyboardInterrupt  # as a kill, between two saves
    hashed.append(path)
    return real(path)

  monkeypatch.setattr(keys, 'file_digest', dies_at_the_35th)
  with pytest.raises(KeyboardInterrupt):
    compute._hash_files(paths, keys.DigestMemo(str(tmp_path / 'cache')))
  hashed.clear()
  monkeypatch.setattr(keys, 'file_digest',
                      lambda p: hashed.append(p) or real(p))
  digests = compute._hash_files(paths + paths[:3],
                                keys.DigestMemo(str(tmp_path / 'cache')))
  # The first 20 were saved before the kill; 30 are left, each once.
  assert len(hashed) == 30 and len(set(hashed)) == 30
  assert digests == [real(p) for p in paths + paths[:3]]
  bad = compute._hash_files([str(tmp_path / 'missing.jpg')],
                            keys.DigestMemo(None))
  assert isinstance(bad[0], OSError)


def test_content_keys_of_unreadable_and_repeated_paths(tmp_path):
  """The cache keys a run hashes before loading its module: a repeated
  path is hashed once and keyed with its own suffix (boxes); an unreadable
  one is an OSError, left out of the readable indices (int64)."""
  from bottleneck_cache import keys
  from retrain.bottlenecks import compute
  a, b = tmp_path / 'a.jpg', tmp_path / 'b.jpg'
  a.write_bytes(b'a')
  b.write_bytes(b'b')
  gone = str(tmp_path / 'gone.jpg')
  paths = [str(a), gone, str(b), str(a), gone]
  digests, readable, failures = compute.content_keys(
      paths, str(tmp_path / 'cache'), ['#1', '', '', '#2', ''])
  assert digests[0] == keys.file_digest(str(a)) + '#1'
  assert digests[3] == keys.file_digest(str(a)) + '#2'
  assert digests[2] == keys.file_digest(str(b))
  assert isinstance(digests[1], OSError) and isinstance(digests[4], OSError)
  assert readable.dtype == np.int64 and readable.tolist() == [0, 2, 3]
  assert [path for path, _ in failures] == [gone, gone]
  assert len(keys.DigestMemo(str(tmp_path / 'cache'))) == 2


class _Stop(Exception):
  pass


def test_a_run_hashes_before_it_loads_the_module(small_config, colour_dir,
                                                 monkeypatch):
  """pipeline.run hashes every file (the memo is written) before
  it loads the module, so the two are not held at once; a mistyped module
  is refused before either."""

  from bottleneck_cache import keys
  from retrain import pipeline
  from retrain.errors import ModuleError
  from retrain.steps import prepare
  memo = os.path.join(small_config.cache.bottleneck_dir, keys.MEMO_FILE)
  typo = small_config.replace(
                             tfhub_module=str(colour_dir / 'no_module'))
  with pytest.raises(ModuleError, match='neither a preset name nor an '
                     'existing folder'):
    pipeline.run(typo)
  assert not os.path.exists(memo)

  memo_written = []

  def load(*args, **kwargs):
    memo_written.append(os.path.exists(memo))
    raise _Stop

  monkeypatch.setattr(prepare.ensemble_lib, 'load', load)
  with pytest.raises(_Stop):
    pipeline.run(small_config)
  assert memo_written == [True]
  paths = sorted(str(p) for p in colour_dir.rglob('*.jpg'))
  assert len(keys.DigestMemo(os.path.dirname(memo))) == len(paths) > 0


def test_digest_memo_survives_a_corrupt_file(tmp_path, caplog):
  from bottleneck_cache import keys
  (tmp_path / keys.MEMO_FILE).write_text('{not json')
  f = tmp_path / 'x.bin'
  f.write_bytes(b'x')
  memo = keys.DigestMemo(str(tmp_path))
  assert memo.digest(str(f)) == keys.file_digest(str(f))
  assert 'Ignoring unreadable digest memo' in caplog.text
  memo.save()
  assert keys.DigestMemo(str(tmp_path)).digest(str(f)) == keys.file_digest(
      str(f))
