"""Serving edge: the FastAPI service officer apps call for next-best offers."""
