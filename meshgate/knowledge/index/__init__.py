"""Chunk indexes: one contract (base.ChunkIndex), one backend per store (embedded, milvus,
pgvector, pinecone), chosen by name through `registry.build_index`."""
