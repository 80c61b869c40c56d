"""retrain: turn a folder of photos into an image classifier on a laptop CPU.

Data flows one way: discover images -> split -> bottlenecks (cached) ->
train head -> evaluate -> export. `retrain.pipeline.run(config)` runs it all.
"""

__version__ = '0.1.0'
