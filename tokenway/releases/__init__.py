"""Releases: sticky weighted splits between versions of a model, and shadow traffic to a candidate."""
