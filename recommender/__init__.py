"""Next-best-offer recommender core."""
