"""A SavedModel is code: refuse modules whose graphs touch files or Python.

`--tfhub_module` may name any local SavedModel folder. Its graph runs with
the user's rights, and TensorFlow has ops that read any file (ReadFile,
MatchingFiles, file readers and datasets, lookup tables from text files),
write or append to files (WriteFile, summary writers, dataset savers), or
call back into Python (PyFunc, EagerPyFunc). A feature extractor needs
none of them, so a module that contains any, in its graph or in any of
its functions, is refused unless the user says they trust it
(`--trust_module`). The scan reads saved_model.pb before anything of the
module is loaded or run.

Not flagged: the checkpoint ops every SavedModel carries for its own
variables (SaveV2, RestoreV2, MergeV2Checkpoints), which the loader runs
with the module's own variables path.
"""

from __future__ import annotations

import collections
import os
from typing import Dict, List

from retrain.errors import ModuleError

# Ops that reach the file system or Python. Names as in the GraphDef.
UNSAFE_OPS = frozenset({
    # Files, directly.
    'ReadFile', 'WriteFile', 'MatchingFiles', 'ImmutableConst',
    # Python.
    'PyFunc', 'PyFuncStateless', 'EagerPyFunc',
    # Readers and lookup tables filled from files.
    'WholeFileReader', 'WholeFileReaderV2', 'TextLineReader',
    'TextLineReaderV2', 'FixedLengthRecordReader',
    'FixedLengthRecordReaderV2', 'TFRecordReader', 'TFRecordReaderV2',
    'IdentityReader', 'IdentityReaderV2', 'LMDBReader',
    'InitializeTableFromTextFile', 'InitializeTableFromTextFileV2',
    'LoadAndRemapMatrix',
    # Datasets that read or write files.
    'TextLineDataset', 'TFRecordDataset', 'TFRecordDatasetV2',
    'FixedLengthRecordDataset', 'FixedLengthRecordDatasetV2', 'CSVDataset',
    'CSVDatasetV2', 'ExperimentalCSVDataset', 'SqlDataset',
    'ExperimentalSqlDataset', 'LMDBDataset', 'ExperimentalLMDBDataset',
    'CacheDataset', 'CacheDatasetV2', 'SaveDataset', 'SaveDatasetV2',
    'ExperimentalSaveDataset', 'LoadDataset', 'ExperimentalLoadDataset',
    'SnapshotDataset', 'SnapshotDatasetV2', 'DatasetToTFRecord',
    'ExperimentalDatasetToTFRecord',
    # Summary files and debugging sinks that write where they are told.
    'CreateSummaryFileWriter', 'CreateSummaryDbWriter', 'WriteSummary',
    'WriteRawProtoSummary', 'WriteScalarSummary', 'WriteHistogramSummary',
    'WriteImageSummary', 'WriteAudioSummary', 'WriteGraphSummary',
    'ImportEvent', 'DebugIdentity', 'DebugIdentityV2', 'DebugIdentityV3',
    'DebugNanCount', 'DebugNumericSummary', 'DebugNumericSummaryV2',
    # TF1 savers with a path from the graph itself.
    'Save', 'SaveSlices', 'Restore', 'RestoreSlice',
})


def unsafe_ops(path: str) -> Dict[str, List[str]]:
  """{op type: [where, ...]} of unsafe ops in the SavedModel folder `path`.

  `where` is 'graph' or 'function <name>'; at most 3 places per op. An
  unreadable or absent saved_model.pb gives {} (loading reports it).
  """
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  pb = os.path.join(path, 'saved_model.pb')
  try:
    with open(pb, 'rb') as f:
      data = f.read()
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(data)
  except Exception:  # pylint: disable=broad-except
    return {}
  found = collections.defaultdict(list)

  def note(op, where):
    if op in UNSAFE_OPS and len(found[op]) < 3 and where not in found[op]:
      found[op].append(where)

  for meta in saved.meta_graphs:
    for node in meta.graph_def.node:
      note(node.op, 'graph')
    for function in meta.graph_def.library.function:
      for node in function.node_def:
        note(node.op, f'function {function.signature.name}')
  return dict(found)


def check_module(handle: str, path: str, trust: bool) -> None:
  """Raises ModuleError if the module at `path` may touch files or Python.

  Args:
    handle: what the user passed (for the message).
    path: the local SavedModel folder.
    trust: the user's --trust_module: scan skipped.
  """
  if trust or not path or not os.path.isdir(path):
    return
  found = unsafe_ops(path)
  if not found:
    return
  listed = '; '.join(f'{op} (in {", ".join(where)})'
                     for op, where in sorted(found.items()))
  raise ModuleError(
      f'Module {handle!r} ({path}) contains operations that can read or '
      f'write files or run Python: {listed}. A SavedModel is code that runs '
      'with your rights, and a feature extractor needs none of these. Use '
      'it only if you trust where it came from, and then set '
      'trust_module=True.', fields=('trust_module',))
