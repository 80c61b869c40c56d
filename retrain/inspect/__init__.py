"""retrain.inspect: a dataset health report, before training.

`python -m retrain.inspect --image_dir DIR --output_dir OUT` (or the
`retrain-inspect` script) takes retrain's data flags, computes the
bottleneck vectors into the same cache as `retrain` (so training afterwards
is warm) and writes OUT/report.json and a self-contained OUT/report.html.
See docs/inspect.md for what is in them and the JSON schema.

Modules: `analysis` (numpy only: duplicates, near-duplicates, out-of-fold
label errors, outliers, class balance), `files` (sizes, modes, formats,
EXIF, thumbnails), `charts` (matplotlib, headless), `html` (the page),
`report` (the orchestration: `inspect_dataset(config, options)`).
"""
