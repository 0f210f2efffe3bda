"""The registry's domain layer: what each operation means, between the API and index/storage."""
