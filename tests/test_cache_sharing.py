"""The cache shared by several processes, stale temporaries, full disks."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import bottleneck_cache
from bottleneck_cache import claims, errors, temporaries
from bottleneck_cache import store as store_lib

NS = {'module': 'fake', 'module_fingerprint': 'abc', 'input_size': [8, 8]}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vec(key, dim=4):
  seed = int.from_bytes(key.encode(), 'little') % (2**32)
  return np.random.default_rng(seed).random(dim).astype(np.float32)


def one_by_one(keys):
  def compute(missing):
    for i in missing:
      yield [i], vec(keys[i])[None]
  return compute


# Fills the cache as retrain would, with a numpy compute function that
# sleeps a little per batch so the processes overlap.
_FILLER = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    sys.path.insert(0, {repo!r})
    from bottleneck_cache import claims
    from bottleneck_cache import store as store_lib
    claims.CLAIM_BUCKET = 16
    def vec(key, dim=4):
      seed = int.from_bytes(key.encode(), 'little') % (2**32)
      return np.random.default_rng(seed).random(dim).astype(np.float32)
    keys = [f'key{{i}}' for i in range({n})]
    def compute(missing):
      for s in range(0, len(missing), 4):
        part = list(missing[s:s + 4])
        time.sleep(0.01)
        yield part, np.stack([vec(keys[i]) for i in part])
    s = store_lib.BottleneckStore({root!r}, {ns!r})
    v, ok, stats = s.get_or_compute(keys, compute)
    np.save({out!r}, v)
    print(json.dumps({{'computed': stats.computed, 'reused': stats.reused,
                      'ok': int(ok.sum())}}))
''')


@pytest.mark.slow
def test_processes_filling_one_part_filled_cache_agree(tmp_path):
  n, procs = 400, 6
  keys = [f'key{i}' for i in range(n)]
  root = str(tmp_path / 'cache')
  # Part-filled by an earlier run that was stopped: 20 small shards.
  s = bottleneck_cache.BottleneckStore(root, NS)
  for k in range(0, 100, 5):
    s.put(keys[k:k + 5], np.stack([vec(key) for key in keys[k:k + 5]]))
  running = []
  for p in range(procs):
    script = _FILLER.format(repo=REPO, n=n, root=root, ns=NS,
                            out=str(tmp_path / f'out{p}.npy'))
    running.append(subprocess.Popen([sys.executable, '-c', script],
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
  results = []
  for proc in running:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  expected = np.stack([vec(k) for k in keys])
  for p in range(procs):
    np.testing.assert_array_equal(np.load(tmp_path / f'out{p}.npy'), expected)
  assert all(r['ok'] == n for r in results)
  # The claims split the work: each missing vector was computed once.
  assert sum(r['computed'] for r in results) == n - 100, results
  again = bottleneck_cache.BottleneckStore(root, NS)
  np.testing.assert_array_equal(again.get(keys), expected)
  assert not [name for name in os.listdir(again.directory)
              if name.startswith((claims.CLAIM_PREFIX,
                                  store_lib.TMP_PREFIX))]


def test_reader_survives_a_merge_by_another_process(tmp_path):
  keys = [f'r{i}' for i in range(20)]
  reader = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  for k in keys:
    reader.put([k], vec(k)[None])
  # Another process merges every shard the reader has in its index.
  other = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  other.merge()
  shards = [n for n in os.listdir(reader.directory) if n.endswith('.h5')]
  assert len(shards) == 1
  np.testing.assert_array_equal(reader.get(keys),
                                np.stack([vec(k) for k in keys]))


def test_claimed_bucket_is_left_to_its_live_owner(tmp_path, monkeypatch):
  keys = [f'c{i}' for i in range(10)]
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  (bucket, _), = claims._buckets(keys, range(10), 10)
  claim = os.path.join(s.directory, claims.CLAIM_PREFIX + bucket)
  with open(claim, 'w') as f:
    f.write(temporaries.owner_tag())  # this (live) process on this host
  other = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  calls = []

  def fill_then_release():
    # What the owner does meanwhile: stores the vectors, drops its claim.
    other.put(keys, np.stack([vec(k) for k in keys]))
    os.remove(claim)

  real_sleep = time.sleep
  monkeypatch.setattr(claims.time, 'sleep',
                      lambda t: (fill_then_release(), real_sleep(0)))
  v, ok, stats = s.get_or_compute(
      keys, lambda m: calls.append(list(m)) or one_by_one(keys)(m))
  assert calls == [] and ok.all()
  assert stats.computed == 0 and stats.reused == 10
  np.testing.assert_array_equal(v, np.stack([vec(k) for k in keys]))


def test_claim_of_a_dead_process_is_taken_over(tmp_path, caplog):
  keys = ['d0', 'd1']
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  (bucket, _), = claims._buckets(keys, range(2), 2)
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  with open(os.path.join(s.directory, claims.CLAIM_PREFIX + bucket),
            'w') as f:
    f.write(f'{dead.stdout.strip()}@{temporaries.hostname()}~x')
  _, ok, stats = s.get_or_compute(keys, one_by_one(keys))
  assert ok.all() and stats.computed == 2
  assert 'Taking over the abandoned cache claim' in caplog.text


def test_stale_temporaries_judged_by_host_and_age(tmp_path):
  here = temporaries.hostname()
  live = f'{os.getpid()}@{here}~a'
  dead_pid = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                            capture_output=True, text=True,
                            check=True).stdout.strip()
  dead = f'{dead_pid}@{here}~b'
  # A live process id on another host says nothing about that host.
  remote = f'{os.getpid()}@not-{here}.example~c'
  now = time.time()
  for tag in (live, dead, remote):
    (tmp_path / f'.tmp-{tag}').write_bytes(b'x')
  old_remote = tmp_path / f'.tmp-{dead_pid}@other-host~d'
  old_remote.write_bytes(b'x')
  old = now - 2 * temporaries.STALE_AFTER_SECONDS
  os.utime(old_remote, (old, old))
  removed = temporaries.remove_stale(str(tmp_path), '.tmp-')
  left = sorted(os.listdir(tmp_path))
  assert sorted(os.path.basename(p) for p in removed) == sorted(
      [f'.tmp-{dead}', old_remote.name])
  assert left == sorted([f'.tmp-{live}', f'.tmp-{remote}'])
  # An hour later even our own live process id is no proof (ids are reused).
  assert temporaries.is_stale(live, now, now=now + 2 *
                              temporaries.STALE_AFTER_SECONDS)


class _FullDisk:
  """Makes the store's plain writes fail with ENOSPC after `allowed` ones."""

  def __init__(self, allowed):
    self.allowed = allowed
    self.real = store_lib._write_bytes

  def __call__(self, path, data):
    if self.allowed <= 0:
      with open(path, 'wb') as f:
        f.write(bytes(data)[:100])  # a partial file, as a real disk leaves
      raise OSError(errno.ENOSPC, 'No space left on device')
    self.allowed -= 1
    self.real(path, data)


def test_full_disk_keeps_written_shards_and_names_the_folder(tmp_path,
                                                             monkeypatch):
  keys = [f'f{i}' for i in range(6)]
  s = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  monkeypatch.setattr(store_lib, '_write_bytes', _FullDisk(3))
  with pytest.raises(store_lib.CacheFullError) as raised:
    s.get_or_compute(keys, one_by_one(keys))
  message = str(raised.value)
  assert s.directory in message and 'MiB needed' in message
  assert 'cache folder on a disk with room' in message
  names = os.listdir(s.directory)
  assert not [n for n in names if n.startswith(store_lib.TMP_PREFIX)]
  monkeypatch.undo()
  # The next run (with space) reuses the three vectors written before.
  again = bottleneck_cache.BottleneckStore(str(tmp_path), NS)
  v, ok, stats = again.get_or_compute(keys, one_by_one(keys))
  assert stats.reused == 3 and stats.computed == 3 and ok.all()
  np.testing.assert_array_equal(v, np.stack([vec(k) for k in keys]))


def test_free_space_check_says_how_much_and_where(tmp_path, monkeypatch):
  import collections
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(store_lib.shutil, 'disk_usage',
                      lambda p: usage(10 << 20, 9 << 20, 1 << 20))
  need = errors.bytes_needed(10000, 1280)
  assert need > 50 << 20
  with pytest.raises(store_lib.CacheFullError, match='1.0 MiB free') as e:
    errors.check_free_space(str(tmp_path / 'not' / 'yet'), need)
  assert str(tmp_path / 'not' / 'yet') in str(e.value)
  errors.check_free_space(str(tmp_path), 1 << 19)  # enough: no error


def _tmpfs(path, size='3m'):
  if sys.platform != 'linux' or os.geteuid() != 0:
    pytest.skip('mounting a small tmpfs needs root on Linux')
  path.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}',
                         'tmpfs', str(path)], capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  return path


@pytest.mark.slow
def test_real_full_disk_is_an_error_not_a_crash(tmp_path):
  """On a 3 MB tmpfs, in a subprocess, so a segfault would show as -11."""
  mnt = _tmpfs(tmp_path / 'small')
  try:
    script = textwrap.dedent(f'''
        import sys, numpy as np
        sys.path.insert(0, {REPO!r})
        from bottleneck_cache import store as store_lib
        s = store_lib.BottleneckStore({str(mnt)!r}, {NS!r})
        keys = [f'k{{i}}' for i in range(4000)]
        def compute(missing):
          for a in range(0, len(missing), 100):
            part = list(missing[a:a + 100])
            yield part, np.ones((len(part), 1280), np.float32)
        try:
          s.get_or_compute(keys, compute)
        except store_lib.CacheFullError as e:
          print('FULL', len(store_lib.BottleneckStore({str(mnt)!r}, {NS!r})))
          print(e)
          sys.exit(1)
    ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    first, message = done.stdout.split('\n', 1)
    assert first.startswith('FULL') and int(first.split()[1]) >= 100
    assert str(mnt) in message and 'MiB needed' in message
    leftovers = [n for ns in os.listdir(mnt) if os.path.isdir(mnt / ns)
                 for n in os.listdir(mnt / ns)
                 if n.startswith(store_lib.TMP_PREFIX)]
    assert leftovers == []
  finally:
    subprocess.run(['umount', str(mnt)], check=False)
