"""The HTTP server: existing clients' protocols (text-embeddings-inference, Hugging Face, Open Inference v2)
over one long-lived Batcher per served bundle, with metrics, limits, auth and graceful shutdown."""
