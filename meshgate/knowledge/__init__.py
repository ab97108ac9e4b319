"""Knowledge banks: documents parsed, chunked, classified and indexed for permission-aware,
cited retrieval (issue 15). Library modules here; the pipeline step, CLI and HTTP routes on top."""
