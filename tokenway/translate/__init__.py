"""Translation between other wire formats (Anthropic Messages, OpenAI Responses) and OpenAI chat.

Pure functions over parsed bodies and canonical SSE blocks; the front doors in tokenway/api/ use them.
"""
