"""Fitting a conversation to a model's context window.

``options`` is a model's ``context:`` config; ``counting`` counts a prompt's tokens with the model's
tokenizer (or an estimate); ``fitting`` says which turns may go; ``summaries`` writes and caches
summaries of older turns. The policy that uses them is ``tokenway.policies.context_window``.
"""
