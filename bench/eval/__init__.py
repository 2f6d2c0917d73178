"""Evaluation and deployment: scoring (embeddings, cosine, AS-norm), NIST metrics, the speaker bootstrap,
inference energy per back end, ONNX export and int8, latency."""
