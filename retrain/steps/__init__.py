"""The steps of a run, in the order retrain.pipeline.run calls them:
prepare -> vectors -> head -> trust -> outputs."""
