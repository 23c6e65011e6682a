"""Ray Serve application (Generator and Retriever deployments): the next milestone; not built yet."""
