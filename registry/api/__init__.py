"""The REST API under /api/v1: thin routes over registry.services."""
