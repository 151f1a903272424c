"""tokenway: a production LLM gateway with one OpenAI-compatible front door."""

__version__ = "0.1.0"
