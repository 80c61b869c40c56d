"""The files every model file travels with, and how they are written.

The frozen graph and the TFLite file describe themselves with two files
beside them, named after the whole model file (X.pb -> X.pb.labels.txt and
X.pb.metadata.json; X.tflite -> X.tflite.labels.txt, ...), so a .pb and a
.tflite of the same stem never share them. Each file is written under a
temporary name and renamed into place; a file already there is first moved
to `<name>.previous-<time>`.
"""

from __future__ import annotations

import os
from typing import Dict, Sequence

from retrain.common import atomic, names, strict_json
from retrain.common import earlier_outputs as keep
from retrain.common.names import LABELS_SUFFIX, METADATA_SUFFIX
from retrain.export import saved_model as export_lib
from retrain.features.modules import FeatureModule


def sidecar_paths(path: str) -> Dict[str, str]:
  """The labels and metadata files that travel with a .pb or .tflite file.

  Named after the whole file name (flowers.pb -> flowers.pb.labels.txt), so
  two models with the same stem (flowers.pb, flowers.tflite) never share
  them.
  """
  return {'labels': path + LABELS_SUFFIX, 'metadata': path + METADATA_SUFFIX}


def write_file(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically, keeping any earlier file aside."""
  with atomic.replacing(path) as tmp:
    atomic.write_bytes(tmp, data)
    keep.move_aside(path)


def file_metadata(path: str, labels: Sequence[str], module: FeatureModule,
                   info: dict) -> dict:
  """The JSON metadata of a model file (sidecar, and embedded in TFLite)."""
  data = export_lib.describe_model(module, labels)
  data[names.META_MODEL_FILE] = os.path.basename(path)
  data.update(info)
  return data


def write_sidecars(path: str, labels: Sequence[str], module: FeatureModule,
                    info: dict) -> None:
  data = file_metadata(path, labels, module, info)
  files = sidecar_paths(path)
  write_file(files['labels'], export_lib.labels_text(labels).encode())
  write_file(files['metadata'], strict_json.dumps(data, indent=2).encode())
