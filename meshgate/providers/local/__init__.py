"""Models that run inside the meshgate process: llama.cpp chat, ONNX embeddings."""
