"""Guardrails: checks on what goes into and comes out of a model call (PII, prompt injection, terms)."""
