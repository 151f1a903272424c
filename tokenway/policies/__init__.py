"""The request path's policies. Each wraps the next handler; ``app.py`` lists them in order."""
