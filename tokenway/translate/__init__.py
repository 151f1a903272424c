"""Translation between other APIs' wire formats and the gateway's internal OpenAI chat form, as pure functions."""
