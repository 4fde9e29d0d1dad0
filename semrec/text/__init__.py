"""Item/user text: building texts from dataset fields and encoding them into embeddings."""
