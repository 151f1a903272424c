"""Checking replies against what the request asked for: JSON, a JSON Schema, declared tools.

``schemas`` compiles and caches validators; ``replies`` reads a request's contract and checks a
reply against it; ``options`` is the ``structured_output:`` config. The policy that uses them,
retrying and counting, is ``tokenway.policies.structured_output``.
"""
