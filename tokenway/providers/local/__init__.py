"""The embedded local model: a provider over pluggable inference engines (llama.cpp, transformers)."""
