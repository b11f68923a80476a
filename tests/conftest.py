"""Shared test configuration. Each area (drivers, CLI, FastAPI, cloud) has its own conftest."""
