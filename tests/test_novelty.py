""""Not one of my classes": the novelty score flags photos unlike every
class in every export, keeps the asked fraction of held-out photos of the
classes, and label_image says why a photo is unknown; the run's trust.json
and figures."""

import json
import pathlib
import types

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import DEFAULTS
from retrain.head import novelty
from retrain.report import trust
from retrain.steps import trust as trust_step
from retrain.steps import vectors
from tests.conftest import write_image
from tests.test_deploy import SIZE, _deploy_config, make_overlapping_dataset
from tools import label_image


def _classes(n_per_class, dim=20, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 3, (classes, dim))
  # Correlated noise: the shared covariance matters, not only the means.
  mix = rng.normal(0, 1, (dim, dim)) / np.sqrt(dim)
  y = np.repeat(np.arange(classes), n_per_class)
  x = centres[y] + rng.normal(0, 1, (len(y), dim)) @ mix
  return x.astype(np.float32), y, centres, mix


def test_the_threshold_keeps_the_asked_share_of_new_photos_of_the_classes():
  x, y, centres, mix = _classes(150)
  score = novelty.fit_on_split(x, y, 4, components=8, keep=0.9, folds=5,
                               seed=0)
  rng = np.random.default_rng(1)
  fresh_y = rng.integers(0, 4, 4000)
  fresh = centres[fresh_y] + rng.normal(0, 1, (4000, 20)) @ mix
  kept = np.mean(score.scores(fresh) <= score.threshold)
  assert 0.86 < kept < 0.94, kept
  # Scored on the images it was fitted on, the threshold would be too low:
  # the held-out one is higher than their 90 % quantile.
  assert score.threshold > np.quantile(score.scores(x), 0.9)
  # Far from every class (another "domain"): all flagged.
  far = rng.normal(0, 3, (500, 20)) + 12.0
  assert np.all(score.scores(far) > score.threshold)
  assert trust.auroc(score.scores(far), score.scores(fresh)) == 1.0
  # The export's formula gives the same scores in float32.
  np.testing.assert_allclose(score.graph_scores(fresh), score.scores(fresh),
                             rtol=1e-3, atol=1e-3)
  meta = score.metadata()
  assert meta['keep'] == 0.9 and meta['components'] == 8
  assert 'out-of-fold' in meta['held_out']


def test_auroc_and_flagged_counts():
  assert trust.auroc([3, 4], [1, 2]) == 1.0
  assert trust.auroc([1, 2], [3, 4]) == 0.0
  assert trust.auroc([1, 2], [1, 2]) == 0.5
  assert trust.flagged([0.5, 2.0, 3.0], 1.0) == {
      'count': 3, 'flagged': 2, 'kept': 1, 'flagged_fraction': 2 / 3}


def test_a_fine_tuned_networks_own_images_do_not_set_the_threshold():
  """Features of a network that trained on some rows sit tighter round
  their class than a new photo's: the threshold comes from the others."""
  x, y, centres, mix = _classes(150)
  rng = np.random.default_rng(2)
  trained = np.arange(len(y)) % 5 != 0  # 4 of 5 rows: its training images
  x[trained] = centres[y[trained]] + 0.4 * (x[trained] - centres[y[trained]])
  fresh_y = rng.integers(0, 4, 4000)
  fresh = centres[fresh_y] + rng.normal(0, 1, (4000, 20)) @ mix
  score = novelty.fit_on_new_rows(x, y, 4, components=8, keep=0.9,
                                  new=~trained, folds=5, seed=0)
  kept = np.mean(score.scores(fresh) <= score.threshold)
  assert 0.85 < kept < 0.96, kept
  assert len(score.held_out_scores) == np.sum(~trained)
  assert '120 validation images' in score.held_out
  # Every row's out-of-fold score would flag far more new photos.
  every = novelty.fit_on_split(x, y, 4, components=8, keep=0.9, folds=5,
                               seed=0)
  assert np.mean(every.scores(fresh) <= every.threshold) < 0.75


def test_bad_novelty_keep_is_refused_before_work():
  with pytest.raises(Exception, match='novelty_keep=1.5 must be in'):
    novelty.check_keep(1.5)


@pytest.fixture(scope='module')
def with_unknown(tmp_path_factory, fake_module):
  """A run exporting every format, with --unknown_dir photos of other
  colours than the three classes."""
  pytest.importorskip('tf2onnx', reason='the [onnx] extra is not installed')
  root = tmp_path_factory.mktemp('novelty')
  make_overlapping_dataset(root / 'images')
  for k, rgb in enumerate([(250, 250, 30), (250, 250, 250), (10, 10, 10),
                           (250, 30, 250), (30, 250, 250)] * 2):
    write_image(root / 'unknown' / f'u_{k}.png', rgb, size=SIZE, seed=k,
                fmt='PNG')
  out = root / 'out'
  config = _deploy_config(root, fake_module,
                          unknown_dir=str(root / 'unknown'),
                          output_graph=str(out / 'graph.pb'),
                          onnx_output_file=str(out / 'model.onnx'))
  result = pipeline.run(config)
  unknown = sorted(str(p) for p in (root / 'unknown').glob('*.png'))
  return config, result, unknown


@pytest.mark.slow
def test_every_export_flags_photos_of_none_of_the_classes(with_unknown):
  config, result, unknown = with_unknown
  report = json.loads((pathlib.Path(config.outputs.report_dir) /
                       trust.REPORT_FILE).read_text())
  section = report['novelty']
  assert section['unknown']['flagged'] == len(unknown)
  assert section['unknown_auroc'] > 0.99
  assert section['test']['flagged_fraction'] <= 0.3
  assert 0.85 < 1 - section['held_out']['flagged_fraction'] < 0.97
  assert len(section['histogram']['unknown']) == trust.HISTOGRAM_BINS
  # The log and run_summary.json say how the threshold was obtained.
  assert result.figures['novelty_threshold'].startswith('out-of-fold scores')
  assert report['how_measured']['novelty_threshold'] == result.figures[
      'novelty_threshold']
  assert report['calibration']['test_ece_after'] is not None
  assert report['calibration']['reliability']['test']
  for name in report['figures'].values():
    assert (pathlib.Path(config.outputs.report_dir) / name).stat().st_size > 1000
  models = [label_image.load_model(saved_model_dir=config.outputs.saved_model_dir)]
  models += [label_image.load_model(graph=path) for path in (
      config.outputs.output_graph, config.outputs.tflite_output_file,
      config.outputs.onnx_output_file)]
  scores = []
  for model in models:
    assert model.novelty_threshold == pytest.approx(section['threshold'])
    records = label_image.classify_files(model, unknown, min_confidence=0)
    assert all(r.novel and not r.unknown for r in records), model.kind
    scores.append([r.novelty for r in records])
    rows = json.loads(label_image.format_records(records, 'json'))
    assert {r['prediction'] for r in rows} == {'unknown'}
    assert {r['reason'] for r in rows} == {'not like any class'}
  np.testing.assert_allclose(scores[1:], [scores[0]] * 3, rtol=1e-3)
  csv_rows = label_image.format_records(records[:1], 'csv').splitlines()
  assert csv_rows[0].endswith(',reason,novelty,prediction')
  assert csv_rows[1].endswith(',not like any class,'
                              f'{records[0].novelty:.6f},unknown')
  table = label_image.format_records(records[:1], 'table')
  assert 'unknown: not like any class (novelty' in table
  # Photos of the classes: mostly predicted, the reason empty.
  own = label_image.classify_files(models[0], sorted(
      str(p) for p in pathlib.Path(config.data.image_dir).rglob('*.png')),
                                   min_confidence=0)
  assert np.mean([r.novel for r in own]) < 0.15
  # retrain.load(...).predict flags the same photos, with the same reason.
  import retrain
  for path in (config.outputs.saved_model_dir, config.outputs.tflite_output_file):
    result = retrain.load(path).predict(unknown)
    assert list(result.unknown) == [True] * len(unknown)
    assert result.predictions == ['unknown'] * len(unknown)
    assert set(result.reasons) == {'not like any class'}
    np.testing.assert_allclose(result.novelty, scores[0], rtol=1e-3)


@pytest.mark.slow
@pytest.mark.usefixtures('fine_tuning_kept')
def test_exports_of_a_fine_tuned_run_flag_photos_of_none_of_the_classes(
    tmp_path, caplog):
  """After accepted fine-tuning the novelty score is fitted on the
  fine-tuned network's features (what the exports compute), its
  threshold on held-out ones: the exports flag other colours and keep
  the classes' photos."""
  from tests.test_fine_tune import export_trainable_module
  module_dir = export_trainable_module(tmp_path / 'trainable_module')
  make_overlapping_dataset(tmp_path / 'images', per_class=30)
  for k, rgb in enumerate([(250, 250, 30), (250, 250, 250), (10, 10, 10),
                           (250, 30, 250), (30, 250, 250)]):
    write_image(tmp_path / 'unknown' / f'u_{k}.png', rgb, size=SIZE, seed=k,
                fmt='PNG')
  config = _deploy_config(
      tmp_path, module_dir, fine_tune=True, fine_tune_epochs=3,
      fine_tune_learning_rate=1e-2, fine_tune_batch_size=8,
      bottleneck_runtime='tf', unknown_dir=str(tmp_path / 'unknown'))
  caplog.set_level('INFO', logger='absl')
  result = pipeline.run(config)
  assert not result.fine_tuned.metadata['fine_tuned'].get('kept_frozen_head')
  report = json.loads((pathlib.Path(config.outputs.report_dir) /
                       trust.REPORT_FILE).read_text())
  section = report['novelty']
  meta = json.loads((pathlib.Path(config.outputs.saved_model_dir) /
                     'retrain_metadata.json').read_text())
  assert 'fine-tuned network' in meta['novelty']['held_out']
  assert section['unknown']['flagged'] == 5
  unknown = sorted(str(p) for p in (tmp_path / 'unknown').glob('*.png'))
  own = sorted(str(p) for p in (tmp_path / 'images').rglob('*.png'))
  for model in (label_image.load_model(saved_model_dir=config.outputs.saved_model_dir),
                label_image.load_model(graph=config.outputs.tflite_output_file)):
    assert model.novelty_threshold == pytest.approx(section['threshold'])
    records = label_image.classify_files(model, unknown, min_confidence=0)
    assert all(r.novel for r in records), model.kind
    kept = label_image.classify_files(model, own, min_confidence=0)
    assert np.mean([r.novel for r in kept]) < 0.15, model.kind
  assert 'Novelty score fitted on the fine-tuned network' in caplog.text


@pytest.mark.slow
def test_an_int8_tflite_model_has_no_novelty_output_and_says_so(
    tmp_path, fake_module):
  import tensorflow as tf

  from retrain import images
  from retrain.export import formats as export_formats
  from retrain.features import modules as features
  from retrain.head import model
  module = features.load_module(fake_module)
  rng = np.random.default_rng(1)
  paths = [str(write_image(tmp_path / f'{k}.png', tuple(
      int(v) for v in rng.integers(0, 255, 3)), size=SIZE, seed=k, fmt='PNG'))
           for k in range(24)]
  batch = np.stack([images.load_image(p, SIZE).numpy() for p in paths])
  x = module.call(tf.constant(batch)).numpy()
  y = np.arange(24) % 3
  score = novelty.fit_on_split(x, y, 3, 2, 0.9, 2, 0)
  head = model.Head(rng.normal(0, 1, (x.shape[1], 3)).astype(np.float32),
                    np.zeros(3, np.float32), novelty=score)
  for quantization in ('dynamic', 'int8'):
    path = str(tmp_path / f'{quantization}.tflite')
    export_formats.write_tflite(path, module, head, ['a', 'b', 'c'],
                                quantization, calibration_paths=paths,
                                extra_metadata={'novelty': score.metadata()})
    meta = json.loads(pathlib.Path(
        export_formats.sidecar_paths(path)['metadata']).read_text())
    loaded = label_image.load_model(graph=path)
    records = label_image.classify_files(loaded, paths[:4], min_confidence=0)
    if quantization == 'dynamic':
      assert meta['novelty']['threshold'] == pytest.approx(score.threshold)
      assert all(r.novelty is not None for r in records)
      continue
    assert 'novelty' not in meta
    assert 'int8 quantization clips' in meta['novelty_left_out']
    assert loaded.novelty_threshold == float('inf')
    assert not any(r.novel for r in records)
    assert all(r.novelty is None for r in records)


def test_fold_fits_from_the_shared_gram_match_fits_on_the_fold_rows():
  """Each held-out fit reads the one shared Gram matrix and class sums; it
  gives the score a fit on that fold's rows alone gives."""
  x, y, _, _ = _classes(60, dim=30)
  fold = np.arange(len(y)) % 3
  shared = novelty._Shared(x + 4.0, y, 4, fold)
  for k in range(3):
    inside = fold != k
    alone = novelty.fit(x[inside] + 4.0, y[inside], 4, components=6)
    from_shared = shared.fit(6, k)
    assert from_shared.shrinkage == pytest.approx(alone.shrinkage, rel=1e-4)
    np.testing.assert_allclose(from_shared.means, alone.means, atol=1e-4)
    np.testing.assert_allclose(from_shared.scores(x[~inside] + 4.0),
                               alone.scores(x[~inside] + 4.0), rtol=1e-4)


def test_key_sums_add_each_keys_rows_in_float64(monkeypatch):
  x = np.random.default_rng(2).normal(size=(50, 7)).astype(np.float32) + 1e4
  key = np.random.default_rng(3).integers(0, 4, 50)  # key 4 has no rows
  sums = novelty._key_sums(x, key, 5)
  assert sums.shape == (5, 7) and sums.dtype == np.float64
  for k in range(4):
    np.testing.assert_allclose(sums[k], x[key == k].astype(np.float64).sum(0),
                               rtol=1e-12)
  assert np.all(sums[4] == 0)
  assert novelty._key_sums(x[:0], key[:0], 3).shape == (3, 7)
  # Summed in parts of a few rows: the same sums.
  monkeypatch.setattr(novelty, '_SUM_ROWS', 7)
  np.testing.assert_allclose(novelty._key_sums(x, key, 5), sums, rtol=1e-12)


def test_the_float32_gram_gives_the_float64_scores_within_1e_4():
  """The Gram matrix and basis in float32 (the default; rows centred
  first) against float64: scores and threshold agree to 1e-4 relative,
  also on vectors far from the origin."""
  x, y, _, _ = _classes(100, dim=40)
  x = x + 50.0
  fold = np.arange(len(y)) % 4
  single = novelty._Shared(x, y, 4, fold).fit(8)
  double = novelty._Shared(x, y, 4, fold, dtype=np.float64).fit(8)
  assert single.shrinkage == pytest.approx(double.shrinkage, rel=1e-4)
  np.testing.assert_allclose(single.scores(x), double.scores(x), rtol=1e-4)
  held = novelty.fit_held_out(x, y, 4, 8, 0.9, fold, 'test')
  assert held.threshold == pytest.approx(np.quantile(held.held_out_scores,
                                                     0.9))


def test_novelty_folds_hold_near_duplicates_together(monkeypatch):
  paths = ['/d/a/x_nohash_1.jpg', '/d/a/y.jpg', '/d/a/x_nohash_2.jpg',
           '/d/b/z.jpg', '/d/b/w.jpg']
  images = types.SimpleNamespace(
      vectors=np.eye(5, dtype=np.float32), labels=np.array([0, 0, 0, 1, 1]),
      paths_of=lambda rows: [paths[r] for r in rows])
  split = types.SimpleNamespace(
      train=np.array([0, 1, 3]), validation=np.array([2, 4]),
      test=np.zeros(0, np.int64),
      subset=lambda name: {'train': np.array([0, 1, 3]),
                           'validation': np.array([2, 4])}[name])
  seen = {}
  monkeypatch.setattr(trust_step.novelty_lib, 'fit_on_split',
                      lambda *args: seen.setdefault('groups', args[-1]))
  near = vectors.near_duplicates(images, split)
  trust_step.fit_novelty(DEFAULTS, trust_step.in_memory(images, split), 2,
                         groups=near)
  groups = seen['groups']  # rows: train 0, 1, 3 then validation 2, 4
  assert groups[0] == groups[3]  # x_nohash_1 and x_nohash_2
  assert len(set(groups)) == 4
