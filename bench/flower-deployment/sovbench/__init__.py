"""sov's benchmark task as a Flower App."""
