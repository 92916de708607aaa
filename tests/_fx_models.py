"""Model fixtures (owned by the model-backend area)."""
