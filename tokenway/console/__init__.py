"""The console at ``/ui``: static pages driven by the admin API, and the session that lets a browser call it."""
