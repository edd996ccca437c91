#!/bin/sh
# Tansu on port 9092, advertising the address of the chart's KAFKA_ADVERTISED_LISTENERS (PLAINTEXT://host:port).
set -eu
advertised=${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://localhost:9092}
advertised=${advertised#PLAINTEXT://}
exec tansu broker --listener-url tcp://0.0.0.0:9092 --advertised-listener-url "tcp://$advertised" \
  --storage-engine memory://tansu/
