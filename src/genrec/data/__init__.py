"""Data: loaders (P5, raw Amazon 2014, your own tables), splits, the prepared artefacts and tensor batches."""
