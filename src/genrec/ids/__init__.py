"""Item identity: text embeddings, quantizers that turn item vectors into semantic IDs, the catalogue and its
prefix trie, and the collaborative embeddings the default semantic IDs are built from."""
