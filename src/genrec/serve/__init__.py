"""Serving: recommendations for a history or a known user from a trained run."""
