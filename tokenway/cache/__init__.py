"""Response caching: exact keys, single-flight coalescing and the opt-in semantic cache."""
