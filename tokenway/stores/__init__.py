"""State behind small protocols: in-memory/SQLite (one process) and Redis/Postgres (many processes)."""
