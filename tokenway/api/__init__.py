"""HTTP endpoints: the raw-ASGI data plane (``openai``) and the FastAPI control plane (``control``)."""
