"""Jobs: requests that are submitted now and collected later (the async API and OpenAI's Batch API).

A job is one request, kept in the job store (SQLite in the data directory, or Postgres). It is run
through the same policy list as live traffic, below it in the admission queue, by workers inside
the gateway (the default) or by Celery workers (``tokenway worker``) for a fleet.
"""
