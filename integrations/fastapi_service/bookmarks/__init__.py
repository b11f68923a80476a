"""The bookmarks service: a FastAPI application whose changes shape its own data."""
