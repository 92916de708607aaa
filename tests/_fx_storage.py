"""S3 fixtures (owned by the data/storage area)."""
