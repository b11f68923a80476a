"""A queue worker that applies its database changes before it takes the first job."""
