"""``/v1/embeddings``: the request schema, the answer's shape, dynamic batching for the local model
and the translation for Ollama's ``/api/embed``. docs/embeddings.md says what is served and how."""
