"""Pull-through proxy namespaces: read-only local caches of upstream registries."""
