"""Keeps Milvus mix-up vectors in sync with catalog.updates: the next milestone; not built yet."""
