#!/usr/bin/env bash
# Stops exactly what run.sh started.
exec "$(dirname "${BASH_SOURCE[0]}")/run.sh" stop
