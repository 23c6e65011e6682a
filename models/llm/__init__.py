"""The LLM half of the recommender: base model loading, prompts, LoRA tuning, generation, ONNX.

Nothing here knows about Kafka, Ray or Milvus; callers hand in data frames and local paths.
"""
