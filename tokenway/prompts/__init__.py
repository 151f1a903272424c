"""Prompt versions: named, versioned templates kept in the database and applied by a policy."""
