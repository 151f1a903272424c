"""`tokenway bench`: an LLM load tester whose numbers can be trusted.

Metric definitions follow vLLM's `bench serve` exactly (see `tokenway.bench.metrics.DEFINITIONS`);
every run carries a validity audit (`tokenway.bench.audit`) so a client-side artefact is reported
instead of silently skewing the result. Entry point: `tokenway.bench.cli.main(argv)`.
"""
