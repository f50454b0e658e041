"""Models: shared layers, the interface every model speaks (`types`), one file per model, checkpoints."""
