"""Bottleneck vectors on Apache Beam: `python -m retrain.beam` / `retrain-beam`.

Computes the vectors of a data set on any Beam runner (in-process
DirectRunner, Dataflow, Flink, Spark) and writes them into the same
bottleneck cache `python -m retrain` reads, so a following run with the same
module and --bottleneck_dir computes nothing. See docs/beam.md.

Needs the `beam` extra (`pip install ".[beam]"`); the core install and
`python -m retrain` never import Beam.
"""
