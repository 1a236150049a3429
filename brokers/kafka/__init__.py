"""brokers/kafka."""
