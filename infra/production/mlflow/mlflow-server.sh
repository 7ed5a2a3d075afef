#!/usr/bin/env bash
# The MLflow tracking server and model registry Lamina's registry client
# talks to ([registry] tracking_uri = "http://mlflow.lamina.internal:5000").
# Metadata (runs, registered models, the champion alias, Lamina's audit
# tags) in Postgres; artifacts (the SavedModels) in object storage, proxied
# by the server (--serve-artifacts), so Lamina hosts need no object-store
# credentials. MLflow 3.17 (the version Lamina pins), with psycopg2 and boto3
# installed next to it. Run under a supervisor (systemd) as user mlflow.
#
# Environment (from the host's secret store):
#   MLFLOW_BACKEND_STORE_URI   postgresql://mlflow:PASSWORD@postgres.lamina.internal:5432/mlflow
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance role) for the artifact bucket
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI to the Postgres URI of the mlflow database}"

exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination s3://lamina-mlflow/artifacts \
    --serve-artifacts \
    --host 0.0.0.0 \
    --port 5000 \
    --workers 4 \
    --allowed-hosts "mlflow.lamina.internal,mlflow.lamina.internal:5000"
