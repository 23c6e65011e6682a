"""Keeps Milvus's mix-up vectors true to the catalog: builds a bundle's collection
(:mod:`indexer.build`), applies ``catalog.updates`` as they come (:mod:`indexer.agents`,
``python -m indexer worker``) and finds and repairs drift (:mod:`indexer.reconcile`)."""
