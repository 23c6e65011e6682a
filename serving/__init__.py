"""The Ray Serve application: Ingress → Generator (the LLM writes the next item's text) →
Retriever (mix-up search in Milvus)."""
