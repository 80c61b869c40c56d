"""Running an export: load it (load.py; one loader per format in
saved_model.py, frozen_graph.py, tflite.py, onnx_file.py), classify
image files with it (classify.py), `retrain.load` (model.py), and heat
maps of where a classifier looked (explain.py). __main__.py is the
`label_image` command over it (tools/label_image.py runs it from a
clone); it imports nothing of retrain's training."""
