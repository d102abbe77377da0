#!/bin/sh
# Fill the cache of Compose JSON schemas (extracted from the docker-compose wheels; see
# src/shoal/compose/schema.py). Set SHOAL_COMPOSE_SCHEMAS to choose the directory.
set -e
cd "$(dirname "$0")/.."
exec .venv/bin/python -m shoal.compose.schema
